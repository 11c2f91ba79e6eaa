//! Serve the embedded API server from a data directory over HTTPS and write a kubeconfig.
//!
//! `cargo run -p pier-apiserver --example serve -- DATA_DIR [ADDR]` prints `listening https://ADDR`
//! once ready (the restart and kill -9 tests and manual kubectl sessions use it).

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: serve DATA_DIR [ADDR]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let server = pier_apiserver::ApiServer::open(&dir).await?;
    let (bound, task) = server.serve_https(addr.parse()?).await?;
    let url = format!("https://{bound}");
    server.write_kubeconfig(std::path::Path::new(&dir).join("kubeconfig"), &url)?;
    println!("listening {url}");
    std::io::stdout().flush()?;
    task.await?;
    Ok(())
}

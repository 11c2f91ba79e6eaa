//! The kubeconfig that `kubectl` uses as is.

use serde_json::json;

/// The name of the kubeconfig's cluster, user and context (`kubectl --context pier`), also when
/// `pier up` merges them into a user's kubeconfig.
pub const CONTEXT: &str = "pier";

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kubeconfig YAML for `server_url` with the CA and token.
pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": server_url,
            "certificate-authority-data": base64(ca_pem.as_bytes()),
        }}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": "default"}}],
        "current-context": CONTEXT,
        "preferences": {},
    });
    serde_yaml::to_string(&cfg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn renders_a_kubeconfig() {
        let y = render("https://127.0.0.1:6443", "PEM", "tok");
        assert!(y.contains("server: https://127.0.0.1:6443"));
        assert!(y.contains("token: tok"));
        assert!(y.contains("current-context: pier"));
    }
}

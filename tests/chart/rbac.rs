//! What a binary's code asks of the Kubernetes API, derived from its source (not declared by
//! hand), so that the chart's RBAC can be compared with it.
//!
//! The scanner reads every `.rs` file under a crate's `src/`, with those of the crates whose
//! helpers it calls (the shared runtime's), test modules removed, and finds:
//!
//! - **typed handles**: `name: Api<T>` or the metadata-only `Api<PartialObjectMeta<T>>` (let bindings, function parameters, and struct fields,
//!   reached as `anything.name.`), `let name = Api::<T>::...`, and inline `Api::<T>::all(..).method(..)`;
//! - **calls on them**, mapped to verbs ([`method_verbs`]): `get`/`get_opt`/`get_metadata*` → get,
//!   `list`/`list_metadata` → list, `watch*` → watch, `create` → create, `replace` → update,
//!   `patch`/`patch_metadata` → patch, `delete` → delete, `delete_collection` → deletecollection,
//!   `entry` → get+create+update, `*_status` → the same verb on `<resource>/status`;
//! - **watches**: `Controller::new(h, ..)`, `.watches(h, ..)`, `.owns(h, ..)`, `watcher(h, ..)`,
//!   `metadata_watcher(h, ..)` → list + watch;
//! - **kube-runtime helpers**: `finalizer(&h, ..)` → patch (a JSON patch of
//!   `metadata.finalizers`); `Recorder::new` → create + patch on `events.k8s.io` `events` (the
//!   recorder creates an Event and patches its series);
//! - **handles passed to functions**: a function taking `Api<K>` for a generic `K` contributes the
//!   verbs it uses on that parameter to every concrete type its callers pass (to a fixpoint); an
//!   untyped `Api::all(..)` argument takes the callee's parameter type.
//!
//! Anything it cannot resolve is an error, never a silent omission: an `Api<T>` of a type missing
//! from [`resource_of`], a method on a handle missing from [`method_verbs`], an untyped `Api::all`
//! whose type is not visible, a generic helper whose callers cannot be resolved, a raw
//! `client.request`. So adding an API call either shows up as a verb the chart must grant or fails
//! the test until the scanner learns it.

#![allow(
    clippy::regex_creation_in_loops,
    reason = "a test scanning a few dozen files once: clarity over speed"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// One permission: (API group, resource or resource/subresource, verb).
pub type Grant = (String, String, String);

/// The API group and resource of a Rust type used as `Api<T>`.
pub fn resource_of(ty: &str) -> Option<(&'static str, &'static str)> {
    Some(match ty {
        "Network" => ("pier.dev", "networks"),
        "Endpoint" => ("pier.dev", "endpoints"),
        "PortPublish" => ("pier.dev", "portpublishes"),
        "Pod" => ("", "pods"),
        "Node" => ("", "nodes"),
        "Namespace" => ("", "namespaces"),
        "Secret" => ("", "secrets"),
        "ConfigMap" => ("", "configmaps"),
        "Service" => ("", "services"),
        "ServiceAccount" => ("", "serviceaccounts"),
        "Lease" => ("coordination.k8s.io", "leases"),
        // kube-runtime's Recorder and any direct use go through events.k8s.io/v1.
        "Event" | "K8sEvent" => ("events.k8s.io", "events"),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices"),
        "CustomResourceDefinition" => ("apiextensions.k8s.io", "customresourcedefinitions"),
        _ => return None,
    })
}

/// The verbs a method of `kube::Api` needs, and whether they are on the status subresource.
/// `Ok(None)`: a method that makes no request.
pub fn method_verbs(method: &str) -> Result<Option<(&'static [&'static str], bool)>, ()> {
    Ok(Some(match method {
        "get" | "get_opt" | "get_metadata" | "get_metadata_opt" => (&["get"], false),
        "list" | "list_metadata" => (&["list"], false),
        "watch" | "watch_metadata" => (&["watch"], false),
        "create" => (&["create"], false),
        "replace" => (&["update"], false),
        "patch" | "patch_metadata" => (&["patch"], false),
        "delete" => (&["delete"], false),
        "delete_collection" => (&["deletecollection"], false),
        "entry" => (&["get", "create", "update"], false),
        "get_status" => (&["get"], true),
        "patch_status" => (&["patch"], true),
        "replace_status" => (&["update"], true),
        // No request of their own.
        "clone" | "resource_url" | "into_client" | "namespace" | "as_ref" => return Ok(None),
        _ => return Err(()),
    }))
}

/// What the scan found, per crate.
#[derive(Debug, Default)]
pub struct Usage {
    /// The permissions the code needs.
    pub grants: BTreeSet<Grant>,
    /// Where each permission comes from (file:line), for messages.
    pub origins: BTreeMap<Grant, Vec<String>>,
    /// Whether the crate touches the Kubernetes API at all.
    pub uses_api: bool,
    /// What could not be resolved: each one fails the test.
    pub problems: Vec<String>,
}

struct Func {
    file: String,
    name: String,
    /// Parameter names in order, with their `Api<X>` type argument if any.
    params: Vec<(String, Option<String>)>,
    /// The body, with its offset in the file (for line numbers).
    body: String,
    body_at: usize,
    generics: BTreeSet<String>,
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Removes `// ...` comments (outside string literals, roughly) and `#[cfg(test)] mod x { .. }`
/// blocks, keeping every other byte offset (replaced by spaces) so line numbers stay right.
fn clean(text: &str) -> String {
    let mut out: Vec<u8> = text.as_bytes().to_vec();
    let mut i = 0;
    let mut in_str = false;
    while i < out.len() {
        let c = out[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' && (i == 0 || out[i - 1] != b'\'') {
            in_str = true;
        } else if c == b'/' && out.get(i + 1) == Some(&b'/') {
            while i < out.len() && out[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    let mut s = String::from_utf8_lossy(&out).into_owned();
    let re = Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{").expect("regex");
    while let Some(m) = re.find(&s) {
        let open = m.end() - 1;
        let close = matching(&s, open).unwrap_or(s.len() - 1);
        let blank: String = s[m.start()..=close]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        s.replace_range(m.start()..=close, &blank);
    }
    s
}

/// The index of the bracket closing the one at `open` (`(`, `{`, `<` or `[`).
fn matching(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let (o, c) = match bytes[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        b'<' => (b'<', b'>'),
        _ => return None,
    };
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if b == o {
            depth += 1;
        } else if b == c && !(c == b'>' && i > 0 && bytes[i - 1] == b'-') {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Splits a parenthesised argument or parameter list at its top-level commas.
fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut prev = ' ';
    for ch in s.chars() {
        match ch {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '>' if prev != '-' && prev != '=' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                prev = ch;
                continue;
            }
            _ => {}
        }
        cur.push(ch);
        prev = ch;
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The type argument of an `Api<..>` written in `ty` (`&Api<Network>`, `Api<K>`), if any.
fn api_type_arg(ty: &str) -> Option<String> {
    let re = Regex::new(r"\bApi\s*<\s*(?:PartialObjectMeta\s*<\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*>")
        .expect("regex");
    re.captures(ty).map(|c| c[1].to_owned())
}

fn parse_funcs(file: &str, text: &str) -> Vec<Func> {
    let re = Regex::new(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)\s*").expect("regex");
    let mut funcs = Vec::new();
    for m in re.captures_iter(text) {
        let whole = m.get(0).expect("match");
        let name = m[1].to_owned();
        let mut at = whole.end();
        let mut generics = BTreeSet::new();
        if text[at..].starts_with('<') {
            let Some(close) = matching(text, at) else {
                continue;
            };
            for part in split_top(&text[at + 1..close]) {
                let g = part
                    .trim()
                    .split([':', ' '])
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if !g.is_empty() && !g.starts_with('\'') {
                    generics.insert(g);
                }
            }
            at = close + 1;
        }
        let Some(open) = text[at..].find('(').map(|i| i + at) else {
            continue;
        };
        let Some(close) = matching(text, open) else {
            continue;
        };
        let params = split_top(&text[open + 1..close])
            .into_iter()
            .map(|p| {
                let (name, ty) = p.split_once(':').unwrap_or((p.as_str(), ""));
                let name = name.trim().trim_start_matches("mut ").trim().to_owned();
                (name, api_type_arg(ty))
            })
            .collect();
        // The body: the first `{` after the signature, unless a `;` comes first (a declaration).
        let rest = &text[close..];
        let (Some(brace), semi) = (rest.find('{'), rest.find(';')) else {
            continue;
        };
        if semi.is_some_and(|s| s < brace) {
            continue;
        }
        let body_open = close + brace;
        let Some(body_close) = matching(text, body_open) else {
            continue;
        };
        // `where` clauses name generics too.
        for w in Regex::new(r"\b([A-Z][A-Za-z0-9_]*)\s*:")
            .expect("regex")
            .captures_iter(&text[close..body_open])
        {
            generics.insert(w[1].to_owned());
        }
        funcs.push(Func {
            file: file.to_owned(),
            name,
            params,
            body: text[body_open..=body_close].to_owned(),
            body_at: body_open,
            generics,
        });
    }
    funcs
}

/// A handle's type as the scanner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handle {
    /// A concrete resource type.
    Concrete(String),
    /// The function's generic parameter number `n` (its `Api<K>` parameter).
    Param(usize),
}

/// Scans the crate whose sources are under `src`.
pub fn scan(src: &Path) -> Usage {
    scan_all(&[src])
}

/// Scans the sources under every folder of `srcs` as one program (a crate with the crates whose
/// generic helpers it passes its handles to).
pub fn scan_all(srcs: &[&Path]) -> Usage {
    let mut usage = Usage::default();
    let mut files = Vec::new();
    for src in srcs {
        rust_files(src, &mut files);
    }
    let mut texts = Vec::new();
    for path in &files {
        let raw = std::fs::read_to_string(path).unwrap_or_default();
        let text = clean(&raw);
        let name = path.display().to_string();
        texts.push((name, text));
    }
    let mut funcs = Vec::new();
    for (name, text) in &texts {
        if text.contains("Api<") || text.contains("Api::") || text.contains("Recorder::new") {
            usage.uses_api = true;
        }
        if Regex::new(r"\.request\s*(::<[^>]*>)?\s*\(")
            .expect("regex")
            .is_match(text)
            && text.contains("Client")
        {
            for m in Regex::new(r"\bclient\s*\.\s*request")
                .expect("regex")
                .find_iter(text)
            {
                usage.problems.push(format!(
                    "{name}:{}: a raw client.request: the RBAC scanner cannot tell its resource",
                    line_of(text, m.start())
                ));
            }
        }
        for m in Regex::new(r"Recorder::new").expect("regex").find_iter(text) {
            let at = format!("{name}:{}", line_of(text, m.start()));
            for verb in ["create", "patch"] {
                add(&mut usage, ("events.k8s.io", "events", verb), false, &at);
            }
        }
        funcs.extend(parse_funcs(name, text));
    }
    // Struct fields `name: Api<T>`, reached as `self.name`, `ctx.name`, ...
    let mut fields: Vec<(String, String)> = Vec::new();
    let field_re = Regex::new(
        r"(?m)^\s*(pub(\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*)\s*:\s*Api\s*<\s*(?:PartialObjectMeta\s*<\s*)?(\w+)\s*>?\s*>\s*,",
    )
    .expect("regex");
    for (_, text) in &texts {
        for c in field_re.captures_iter(text) {
            fields.push((c[3].to_owned(), c[4].to_owned()));
        }
    }

    // Per function: the verbs used on each generic Api parameter, and the calls it makes that
    // pass handles on: (callee, argument index, handle, location).
    let mut param_verbs: BTreeMap<(String, usize), BTreeSet<(&'static str, bool)>> =
        BTreeMap::new();
    let mut passes: Vec<(String, usize, Option<Handle>, String, String, String)> = Vec::new();
    let func_names: BTreeSet<String> = funcs.iter().map(|f| f.name.clone()).collect();
    let binding_re = Regex::new(
        r"\b(?:let\s+(?:mut\s+)?)?([a-z_][a-z0-9_]*)\s*:\s*&?\s*(?:mut\s+)?Api\s*<\s*(?:PartialObjectMeta\s*<\s*)?(\w+)\s*>",
    )
    .expect("regex");
    let let_ctor_re =
        Regex::new(r"\blet\s+(?:mut\s+)?([a-z_][a-z0-9_]*)\s*=\s*(?:kube::)?Api::<\s*(\w+)\s*>::")
            .expect("regex");
    let inline_re = Regex::new(r"\bApi::<\s*(\w+)\s*>::\w+\s*\(").expect("regex");
    let untyped_re = Regex::new(r"\bApi::(all|namespaced|default_namespaced)\s*\(").expect("regex");
    let watch_re = Regex::new(
        r"(?:Controller::new|\.watches|\.owns|\.watches_with|\.owns_with|\bwatcher|\bmetadata_watcher)\s*\(",
    )
    .expect("regex");
    let call_re =
        Regex::new(r"(?:^|[^.\w])([a-z_][a-z0-9_]*)\s*(?:::<[^>]*>)?\s*\(").expect("regex");

    for f in &funcs {
        let text = &texts.iter().find(|(n, _)| *n == f.file).expect("file").1;
        let at = |off: usize| format!("{}:{}", f.file, line_of(text, f.body_at + off));
        // Bindings visible in this function.
        let mut bindings: Vec<(String, Handle)> = Vec::new();
        let classify = |ty: &str| -> Option<Handle> {
            if resource_of(ty).is_some() {
                return Some(Handle::Concrete(ty.to_owned()));
            }
            None
        };
        let mut problems = Vec::new();
        for (i, (name, ty)) in f.params.iter().enumerate() {
            if let Some(ty) = ty {
                if f.generics.contains(ty) {
                    bindings.push((name.clone(), Handle::Param(i)));
                } else if let Some(h) = classify(ty) {
                    bindings.push((name.clone(), h));
                } else {
                    problems.push(format!(
                        "{}: fn {} takes Api<{ty}>: unknown type (add it to resource_of)",
                        at(0),
                        f.name
                    ));
                }
            }
        }
        for c in binding_re.captures_iter(&f.body) {
            let ty = &c[2];
            match classify(ty) {
                Some(h) => bindings.push((c[1].to_owned(), h)),
                // A parameter's own type (already a binding); anything else built for a
                // generic K inside the function has a type only its callers' turbofish knows.
                None if f.generics.contains(ty) => {
                    let name = &c[1];
                    if !f.params.iter().any(|(p, _)| p == name) {
                        problems.push(format!(
                            "{}: Api<{ty}> built inside the generic fn {}: the RBAC scanner cannot tell {ty}",
                            at(c.get(0).expect("m").start()),
                            f.name
                        ));
                    }
                }
                None => problems.push(format!(
                    "{}: Api<{ty}>: unknown type (add it to resource_of)",
                    at(c.get(0).expect("m").start())
                )),
            }
        }
        for c in let_ctor_re.captures_iter(&f.body) {
            match classify(&c[2]) {
                Some(h) => bindings.push((c[1].to_owned(), h)),
                None => problems.push(format!(
                    "{}: Api::<{}>: unknown type (add it to resource_of)",
                    at(c.get(0).expect("m").start()),
                    &c[2]
                )),
            }
        }
        for (field, ty) in &fields {
            if let Some(h) = classify(ty) {
                bindings.push((format!(".{field}"), h));
            }
        }
        usage.problems.append(&mut problems);

        let resolve_expr = |expr: &str| -> Option<Handle> {
            let e = expr.trim().trim_start_matches('&').trim();
            let e = e.strip_suffix(".clone()").unwrap_or(e).trim();
            if let Some(c) = Regex::new(r"^(?:kube::)?Api::<\s*(\w+)\s*>::")
                .expect("regex")
                .captures(e)
            {
                return classify(&c[1]);
            }
            bindings
                .iter()
                .rev()
                .find(|(n, _)| n == e)
                .map(|(_, h)| h.clone())
        };
        let mut record =
            |usage: &mut Usage, h: &Handle, verbs: &[&'static str], status: bool, off: usize| {
                match h {
                    Handle::Concrete(ty) => {
                        let (g, r) = resource_of(ty).expect("known");
                        for v in verbs {
                            add(usage, (g, r, v), status, &at(off));
                        }
                    }
                    Handle::Param(i) => {
                        let set = param_verbs.entry((f.name.clone(), *i)).or_default();
                        for v in verbs {
                            set.insert((v, status));
                        }
                    }
                }
            };

        // Method calls on named handles.
        for (name, h) in &bindings {
            // A local name stands alone; a field (".name") follows any receiver.
            let prefix = if name.starts_with('.') {
                ""
            } else {
                r"(?:^|[^.\w])"
            };
            let re = Regex::new(&format!(
                r"{prefix}{}(?:\.clone\(\))?\s*\.\s*([a-z_][a-z0-9_]*)\s*(?:::<[^>]*>)?\s*\(",
                regex::escape(name)
            ))
            .expect("regex");
            for c in re.captures_iter(&f.body) {
                let off = c.get(1).expect("m").start();
                match method_verbs(&c[1]) {
                    Ok(Some((verbs, status))) => record(&mut usage, h, verbs, status, off),
                    Ok(None) => {}
                    Err(()) => usage.problems.push(format!(
                        "{}: `{name}.{}(..)` on an Api handle: unknown method (add it to method_verbs)",
                        at(off),
                        &c[1]
                    )),
                }
            }
        }
        // Inline `Api::<T>::all(..).method(..)`.
        for m in inline_re.find_iter(&f.body) {
            let open = m.end() - 1;
            let Some(close) = matching(&f.body, open) else {
                continue;
            };
            let after = &f.body[close + 1..];
            if let Some(c) = Regex::new(r"^\s*\.\s*([a-z_][a-z0-9_]*)\s*(?:::<[^>]*>)?\s*\(")
                .expect("regex")
                .captures(after)
            {
                let ty = Regex::new(r"Api::<\s*(\w+)")
                    .expect("regex")
                    .captures(m.as_str())
                    .map(|c| c[1].to_owned())
                    .unwrap_or_default();
                let Some(h) = classify(&ty) else { continue };
                match method_verbs(&c[1]) {
                    Ok(Some((verbs, status))) => record(&mut usage, &h, verbs, status, m.start()),
                    Ok(None) => {}
                    Err(()) => usage.problems.push(format!(
                        "{}: Api::<{ty}>..{}(..): unknown method (add it to method_verbs)",
                        at(m.start()),
                        &c[1]
                    )),
                }
            }
        }
        // Watches.
        for m in watch_re.find_iter(&f.body) {
            let open = m.end() - 1;
            let Some(close) = matching(&f.body, open) else {
                continue;
            };
            let args = split_top(&f.body[open + 1..close]);
            let Some(first) = args.first() else { continue };
            match resolve_expr(first) {
                Some(h) => record(&mut usage, &h, &["list", "watch"], false, m.start()),
                None => usage.problems.push(format!(
                    "{}: a watch on `{}`: its type is not visible to the RBAC scanner",
                    at(m.start()),
                    first.trim()
                )),
            }
        }
        // Calls passing handles to functions (ours, or kube-runtime's `finalizer`).
        for c in call_re.captures_iter(&f.body) {
            let callee = c[1].to_owned();
            if callee == "fn" || (!func_names.contains(&callee) && callee != "finalizer") {
                continue;
            }
            let open = c.get(0).expect("m").end() - 1;
            let Some(close) = matching(&f.body, open) else {
                continue;
            };
            for (i, arg) in split_top(&f.body[open + 1..close]).iter().enumerate() {
                let a = arg.trim().trim_start_matches('&').trim();
                let mentions_api = a.starts_with("Api::")
                    || a.starts_with("kube::Api::")
                    || bindings.iter().any(|(n, _)| {
                        a == n || a.strip_suffix(".clone()").is_some_and(|x| x.trim() == n)
                    });
                if !mentions_api {
                    continue;
                }
                let handle = resolve_expr(arg);
                if callee == "finalizer" {
                    match &handle {
                        Some(h) => record(
                            &mut usage,
                            h,
                            &["patch"],
                            false,
                            c.get(1).expect("m").start(),
                        ),
                        None => usage.problems.push(format!(
                            "{}: finalizer(..) on an Api whose type is not visible",
                            at(c.get(1).expect("m").start())
                        )),
                    }
                    continue;
                }
                passes.push((
                    callee.clone(),
                    i,
                    handle,
                    arg.trim().to_owned(),
                    at(c.get(1).expect("m").start()),
                    f.name.clone(),
                ));
            }
        }
        // Untyped constructors must be typed by a binding or a concrete parameter: checked
        // below with the calls (an `Api::all(..)` argument), or here for anything else.
        for m in untyped_re.find_iter(&f.body) {
            let before = &f.body[..m.start()];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let stmt_start = before.rfind([';', '{']).map_or(0, |i| i + 1);
            let stmt = &f.body[stmt_start.min(line_start)..m.start()];
            let typed_let = Regex::new(
                r":\s*Api\s*<\s*(?:PartialObjectMeta\s*<\s*)?\w+\s*>?\s*>\s*=\s*$",
            )
            .expect("regex")
            .is_match(stmt.trim_end())
                || Regex::new(
                    r":\s*Api\s*<\s*(?:PartialObjectMeta\s*<\s*)?\w+\s*>?\s*>\s*=\s*(?:kube::)?$",
                )
                .expect("regex")
                .is_match(stmt.trim_end());
            let as_argument = passes.iter().any(|(_, _, _, arg, loc, _)| {
                loc.starts_with(&f.file)
                    && arg.contains(m.as_str().trim_end_matches('('))
                    && arg.contains("Api::")
            });
            if !typed_let && !as_argument {
                usage.problems.push(format!(
                    "{}: an untyped `{}`: write `let name: Api<T> = ..` so the RBAC scanner sees T",
                    at(m.start()),
                    m.as_str().trim_end_matches('(')
                ));
            }
        }
    }

    // Resolve the passes to a fixpoint: a handle passed to a generic parameter takes that
    // parameter's verbs; an untyped `Api::all(..)` takes the callee's concrete parameter type
    // (whose verbs the callee's own bindings already count).
    let by_name: BTreeMap<&str, Vec<&Func>> = funcs.iter().fold(BTreeMap::new(), |mut m, f| {
        m.entry(f.name.as_str()).or_default().push(f);
        m
    });
    for _ in 0..8 {
        let mut changed = false;
        for (callee, i, handle, arg, loc, caller) in &passes {
            let Some(targets) = by_name.get(callee.as_str()) else {
                continue;
            };
            for target in targets {
                let Some((_, Some(ty))) = target.params.get(*i) else {
                    continue;
                };
                if !target.generics.contains(ty) {
                    if handle.is_none() && resource_of(ty).is_none() {
                        usage.problems.push(format!(
                            "{loc}: `{arg}` passed to {callee}(Api<{ty}>): unknown type"
                        ));
                    }
                    continue;
                }
                let verbs = param_verbs
                    .get(&(callee.clone(), *i))
                    .cloned()
                    .unwrap_or_default();
                match handle {
                    Some(Handle::Concrete(ty)) => {
                        let (g, r) = resource_of(ty).expect("known");
                        for (v, status) in verbs {
                            add(&mut usage, (g, r, v), status, loc);
                        }
                    }
                    Some(Handle::Param(j)) => {
                        let set = param_verbs.entry((caller.clone(), *j)).or_default();
                        let before = set.len();
                        set.extend(verbs);
                        changed |= set.len() != before;
                    }
                    None if !verbs.is_empty() => usage.problems.push(format!(
                        "{loc}: `{arg}` passed to the generic {callee}: its type is not visible"
                    )),
                    None => {}
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Safety net: every concrete type written as `Api<T>` or `Api::<T>` must have led to at
    // least one grant, or a use of it went unseen (e.g. an `Option<Api<T>>`, a tuple, a macro).
    let mention_re =
        Regex::new(r"\bApi\s*(?:::)?<\s*(?:PartialObjectMeta\s*<\s*)?(\w+)\s*>").expect("regex");
    for (name, text) in &texts {
        for c in mention_re.captures_iter(text) {
            let Some((g, r)) = resource_of(&c[1]) else {
                continue;
            };
            let seen = usage
                .grants
                .iter()
                .any(|(gg, rr, _)| gg == g && (rr == r || rr.strip_suffix("/status") == Some(r)));
            if !seen {
                usage.problems.push(format!(
                    "{name}:{}: Api<{}> is used, but the RBAC scanner saw no call on it",
                    line_of(text, c.get(0).expect("m").start()),
                    &c[1]
                ));
            }
        }
    }
    usage.problems.sort();
    usage.problems.dedup();
    usage
}

fn add(usage: &mut Usage, (group, resource, verb): (&str, &str, &str), status: bool, at: &str) {
    let resource = if status {
        format!("{resource}/status")
    } else {
        resource.to_owned()
    };
    let grant = (group.to_owned(), resource, verb.to_owned());
    usage.grants.insert(grant.clone());
    let origins = usage.origins.entry(grant).or_default();
    if !origins.iter().any(|o| o == at) {
        origins.push(at.to_owned());
    }
}

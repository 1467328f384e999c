//! `k3s kubectl`: the few commands k3node and its tests use, against the stand-in's API
//! (`get nodes|node [NAME] [-o json|yaml|wide|name]`, `delete node NAME...`, `get --raw PATH`,
//! `version`). Reads --kubeconfig, $KUBECONFIG or /etc/rancher/k3s/k3s.yaml.

use crate::config::DEFAULT_KUBECONFIG;
use crate::timefmt;
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::Value;

struct Kubeconfig {
    server: String,
    ca: Vec<u8>,
    identity: Option<Vec<u8>>,
    token: Option<String>,
    basic: Option<(String, String)>,
}

fn load_kubeconfig(path: &str) -> Result<Kubeconfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("open {path}"))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("parse {path}"))?;
    let current = doc["current-context"].as_str().unwrap_or("default").to_string();
    let find = |list: &str, name: &str| -> Option<serde_yaml_ng::Value> {
        doc[list].as_sequence()?.iter().find(|e| e["name"].as_str() == Some(name)).cloned()
    };
    let ctx = find("contexts", &current).ok_or_else(|| anyhow!("context {current:?} not found in {path}"))?;
    let cluster_name = ctx["context"]["cluster"].as_str().unwrap_or("default").to_string();
    let user_name = ctx["context"]["user"].as_str().unwrap_or("default").to_string();
    let cluster = find("clusters", &cluster_name).ok_or_else(|| anyhow!("cluster {cluster_name:?} not found"))?;
    let user = find("users", &user_name).unwrap_or(serde_yaml_ng::Value::Null);
    let b64 = |v: &serde_yaml_ng::Value| -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(v.as_str()?.trim()).ok()
    };
    let file_or_data = |v: &serde_yaml_ng::Value, data: &str, file: &str| -> Option<Vec<u8>> {
        b64(&v[data]).or_else(|| std::fs::read(v[file].as_str()?).ok())
    };
    let c = &cluster["cluster"];
    let server = c["server"].as_str().ok_or_else(|| anyhow!("no server in {path}"))?.to_string();
    let ca = file_or_data(c, "certificate-authority-data", "certificate-authority").unwrap_or_default();
    let u = &user["user"];
    let identity = match (
        file_or_data(u, "client-certificate-data", "client-certificate"),
        file_or_data(u, "client-key-data", "client-key"),
    ) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend(key);
            Some(cert)
        }
        _ => None,
    };
    let token = u["token"].as_str().map(String::from);
    let basic = match (u["username"].as_str(), u["password"].as_str()) {
        (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
        _ => None,
    };
    Ok(Kubeconfig { server: server.trim_end_matches('/').to_string(), ca, identity, token, basic })
}

struct Opts {
    kubeconfig: Option<String>,
    output: Option<String>,
    raw: Option<String>,
    rest: Vec<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts { kubeconfig: None, output: None, raw: None, rest: vec![] };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let mut take = |name: &str| -> Result<String> {
            let v = args.get(i).cloned().ok_or_else(|| anyhow!("flag needs an argument: {name}"))?;
            i += 1;
            Ok(v)
        };
        match a.as_str() {
            "--kubeconfig" => o.kubeconfig = Some(take("--kubeconfig")?),
            "-o" | "--output" => o.output = Some(take("-o")?),
            "--raw" => o.raw = Some(take("--raw")?),
            "--wait" | "--ignore-not-found" | "--client" | "--request-timeout" => {
                if a == "--request-timeout" {
                    take(a)?;
                }
                o.rest.push(a.clone());
            }
            s if s.starts_with("--kubeconfig=") => o.kubeconfig = Some(s["--kubeconfig=".len()..].into()),
            s if s.starts_with("--output=") => o.output = Some(s["--output=".len()..].into()),
            s if s.starts_with("-o=") => o.output = Some(s[3..].into()),
            s if s.starts_with("-o") && s.len() > 2 => o.output = Some(s[2..].into()),
            s if s.starts_with("--raw=") => o.raw = Some(s[6..].into()),
            _ => o.rest.push(a.clone()),
        }
    }
    Ok(o)
}

fn client(kc: &Kubeconfig) -> Result<reqwest::Client> {
    crate::clients::trusting(&kc.ca, kc.identity.as_deref())
}

async fn call(kc: &Kubeconfig, method: reqwest::Method, path: &str) -> Result<(u16, Vec<u8>)> {
    let c = client(kc)?;
    let mut rb = c.request(method, format!("{}{}", kc.server, path));
    if let Some(t) = &kc.token {
        rb = rb.bearer_auth(t);
    } else if let Some((u, p)) = &kc.basic {
        rb = rb.basic_auth(u, Some(p));
    }
    let resp = rb.send().await.map_err(|e| {
        let host = kc.server.trim_start_matches("https://");
        if e.is_connect() {
            anyhow!("The connection to the server {host} was refused - did you specify the right host or port?")
        } else {
            anyhow!("Unable to connect to the server: {}", crate::clients::chain(&e))
        }
    })?;
    let st = resp.status().as_u16();
    let body = resp.bytes().await?.to_vec();
    if st == 401 {
        bail!("error: You must be logged in to the server (Unauthorized)");
    }
    Ok((st, body))
}

fn server_error(st: u16, body: &[u8]) -> anyhow::Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = v["reason"].as_str().unwrap_or("InternalError");
    let msg = v["message"].as_str().map(String::from).unwrap_or_else(|| String::from_utf8_lossy(body).to_string());
    let _ = st;
    anyhow!("Error from server ({reason}): {msg}")
}

fn pretty(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("json");
    String::from_utf8(buf).expect("utf8")
}

fn roles(n: &Value) -> String {
    let mut r: Vec<String> = n["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    if r.is_empty() {
        "<none>".into()
    } else {
        r.join(",")
    }
}

fn status(n: &Value) -> String {
    let ready = n["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True")
        .unwrap_or(false);
    let mut s = if ready { "Ready".to_string() } else { "NotReady".to_string() };
    if n["spec"]["unschedulable"].as_bool() == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn address(n: &Value, kind: &str) -> String {
    n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

/// kubectl's table: columns padded to the widest cell + 3 spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r.get(c).map(|s| s.len()).unwrap_or(0)).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn print_nodes(items: &[Value], output: Option<&str>, single: bool) -> Result<()> {
    match output {
        Some("json") => {
            if single {
                println!("{}", pretty(&items[0]));
            } else {
                let list = serde_json::json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}});
                println!("{}", pretty(&list));
            }
        }
        Some("yaml") => {
            let v = if single {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
            };
            print!("{}", serde_yaml_ng::to_string(&v)?);
        }
        Some("name") => {
            for n in items {
                println!("node/{}", n["metadata"]["name"].as_str().unwrap_or_default());
            }
        }
        None | Some("wide") => {
            if items.is_empty() {
                eprintln!("No resources found");
                return Ok(());
            }
            let wide = output == Some("wide");
            let mut rows = vec![];
            let mut head: Vec<String> = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"].iter().map(|s| s.to_string()).collect();
            if wide {
                head.extend(["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"].iter().map(|s| s.to_string()));
            }
            rows.push(head);
            let now = timefmt::now_secs();
            for n in items {
                let created = n["metadata"]["creationTimestamp"].as_str().and_then(timefmt::parse_rfc3339).unwrap_or(now);
                let mut r = vec![
                    n["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    status(n),
                    roles(n),
                    timefmt::human_duration(now - created),
                    n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or_default().to_string(),
                ];
                if wide {
                    let info = &n["status"]["nodeInfo"];
                    r.extend([
                        address(n, "InternalIP"),
                        address(n, "ExternalIP"),
                        info["osImage"].as_str().unwrap_or("<unknown>").to_string(),
                        info["kernelVersion"].as_str().unwrap_or("<unknown>").to_string(),
                        info["containerRuntimeVersion"].as_str().unwrap_or("<unknown>").to_string(),
                    ]);
                }
                rows.push(r);
            }
            print!("{}", table(&rows));
        }
        Some(other) => bail!("error: unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,name,wide,yaml"),
    }
    Ok(())
}

fn is_node_kind(s: &str) -> bool {
    matches!(s, "node" | "nodes" | "no")
}

async fn run_inner(args: &[String]) -> Result<()> {
    let o = parse_opts(args)?;
    let verb = o.rest.first().map(String::as_str).unwrap_or("");
    if verb == "version" && o.rest.iter().any(|a| a == "--client") {
        println!("Client Version: {}", crate::version::version());
        println!("Kustomize Version: v5.4.2");
        return Ok(());
    }
    let path = o
        .kubeconfig
        .clone()
        .or_else(|| {
            std::env::var("KUBECONFIG").ok().and_then(|k| k.split(':').find(|s| !s.is_empty()).map(String::from))
        })
        .unwrap_or_else(|| DEFAULT_KUBECONFIG.to_string());
    let kc = load_kubeconfig(&path)?;
    if let Some(raw) = &o.raw {
        let (st, body) = call(&kc, reqwest::Method::GET, raw).await?;
        if st >= 400 {
            return Err(server_error(st, &body));
        }
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    match (verb, o.rest.get(1).map(String::as_str)) {
        ("version", _) => {
            println!("Client Version: {}", crate::version::version());
            println!("Kustomize Version: v5.4.2");
            let (st, body) = call(&kc, reqwest::Method::GET, "/version").await?;
            if st >= 400 {
                return Err(server_error(st, &body));
            }
            let v: Value = serde_json::from_slice(&body)?;
            println!("Server Version: {}", v["gitVersion"].as_str().unwrap_or_default());
            Ok(())
        }
        ("get", Some(kind)) if is_node_kind(kind) || kind.starts_with("node/") || kind.starts_with("nodes/") => {
            let mut names: Vec<String> = o.rest[2..].iter().filter(|a| !a.starts_with('-')).cloned().collect();
            if let Some((_, n)) = kind.split_once('/') {
                names.insert(0, n.to_string());
            }
            if names.is_empty() {
                let (st, body) = call(&kc, reqwest::Method::GET, "/api/v1/nodes").await?;
                if st >= 400 {
                    return Err(server_error(st, &body));
                }
                let v: Value = serde_json::from_slice(&body)?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                return print_nodes(&items, o.output.as_deref(), false);
            }
            let mut items = vec![];
            let mut failed = None;
            for n in &names {
                let (st, body) = call(&kc, reqwest::Method::GET, &format!("/api/v1/nodes/{n}")).await?;
                if st >= 400 {
                    let e = server_error(st, &body);
                    eprintln!("{}", e);
                    failed = Some(e);
                    continue;
                }
                items.push(serde_json::from_slice::<Value>(&body)?);
            }
            if !items.is_empty() {
                print_nodes(&items, o.output.as_deref(), names.len() == 1)?;
            }
            match failed {
                Some(_) => Err(anyhow!("")),
                None => Ok(()),
            }
        }
        ("delete", Some(kind)) if is_node_kind(kind) || kind.starts_with("node/") => {
            let mut names: Vec<String> = o.rest[2..].iter().filter(|a| !a.starts_with('-')).cloned().collect();
            if let Some((_, n)) = kind.split_once('/') {
                names.insert(0, n.to_string());
            }
            if names.is_empty() {
                bail!("error: resource(s) were provided, but no name was specified");
            }
            let ignore = o.rest.iter().any(|a| a == "--ignore-not-found");
            let mut failed = false;
            for n in &names {
                let (st, body) = call(&kc, reqwest::Method::DELETE, &format!("/api/v1/nodes/{n}")).await?;
                if st == 404 && ignore {
                    continue;
                }
                if st >= 400 {
                    eprintln!("{}", server_error(st, &body));
                    failed = true;
                    continue;
                }
                println!("node \"{n}\" deleted");
            }
            if failed {
                Err(anyhow!(""))
            } else {
                Ok(())
            }
        }
        _ => bail!(
            "error: the k3s stand-in's kubectl supports only `get nodes|node [NAME] [-o json|yaml|wide|name]`, `delete node NAME`, `get --raw PATH` and `version` (got: {})",
            o.rest.join(" ")
        ),
    }
}

pub async fn run(args: &[String]) -> i32 {
    match run_inner(args).await {
        Ok(()) => 0,
        Err(e) => {
            let msg = e.to_string();
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            1
        }
    }
}

//! A local HTTP server that answers like the Hugging Face Hub for what hf-hub asks:
//! `GET /api/models/{repo}/revision/main` (the file list) and
//! `GET /{repo}/resolve/main/{file}` with `Range` (206 with `Content-Range`, `x-repo-commit`,
//! the content hash in `x-linked-etag` for large files or git's SHA-1 in `ETag` for small
//! ones). Faults on demand: a transfer cut halfway, content that does not match its hash, a
//! gated repo.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::Digest;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
pub struct State {
    /// (repo, file) → bytes.
    pub files: HashMap<(String, String), Vec<u8>>,
    /// Repos that need `Authorization: Bearer <token>`.
    pub gated: HashMap<String, String>,
    /// Files whose next full transfer stops after this many bytes.
    pub cut_once: HashMap<String, usize>,
    /// Files served with their last byte flipped (the advertised hash is the true one).
    pub corrupt: Vec<String>,
    /// Every request: (path, Range header).
    pub log: Vec<(String, Option<String>)>,
}

pub struct Server {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Self { url, state }
    }

    pub fn add(&self, repo: &str, file: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert((repo.into(), file.into()), bytes);
    }

    /// Adds every file of a folder.
    pub fn add_dir(&self, repo: &str, dir: &std::path::Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            self.add(repo, &name, std::fs::read(&p).unwrap());
        }
    }

    /// Requests for `file` so far: their Range headers.
    pub fn ranges(&self, file: &str) -> Vec<Option<String>> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _)| p.ends_with(&format!("/{file}")))
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    h.digest().to_string()
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let mut st = state.lock().unwrap();
    st.log.push((path.clone(), range.clone()));
    let auth_ok = |st: &State, repo: &str| match st.gated.get(repo) {
        None => true,
        Some(tok) => headers.get("authorization") == Some(&format!("Bearer {tok}")),
    };
    let reply = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let repo = rest.split("/revision/").next().unwrap_or("").to_string();
        if !auth_ok(&st, &repo) {
            return reply(&mut conn, "401 Unauthorized", "", b"{\"error\":\"gated\"}");
        }
        let siblings: Vec<serde_json::Value> = st
            .files
            .keys()
            .filter(|(r, _)| *r == repo)
            .map(|(_, f)| serde_json::json!({ "rfilename": f }))
            .collect();
        if siblings.is_empty() {
            return reply(
                &mut conn,
                "404 Not Found",
                "",
                b"{\"error\":\"Repository not found\"}",
            );
        }
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return reply(
            &mut conn,
            "200 OK",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
    }
    let Some((repo, file)) = path
        .trim_start_matches('/')
        .split_once("/resolve/main/")
        .map(|(r, f)| (r.to_string(), f.to_string()))
    else {
        return reply(&mut conn, "404 Not Found", "", b"");
    };
    if !auth_ok(&st, &repo) {
        return reply(
            &mut conn,
            "401 Unauthorized",
            "X-Error-Code: GatedRepo\r\n",
            b"",
        );
    }
    let Some(bytes) = st.files.get(&(repo.clone(), file.clone())).cloned() else {
        return reply(
            &mut conn,
            "404 Not Found",
            "X-Error-Code: EntryNotFound\r\n",
            b"",
        );
    };
    let size = bytes.len();
    let large = file.ends_with(".safetensors") || file.ends_with(".gguf");
    let tag = if large {
        format!(
            "X-Linked-Etag: \"{}\"\r\nX-Linked-Size: {size}\r\n",
            sha256_hex(&bytes)
        )
    } else {
        format!("ETag: \"{}\"\r\n", git_sha1(&bytes))
    };
    let mut served = bytes.clone();
    if st.corrupt.contains(&file) {
        if let Some(last) = served.last_mut() {
            *last ^= 0xff;
        }
    }
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = match range.as_deref().and_then(|r| r.split('-').nth(1)) {
        Some(e) if !e.is_empty() => e.parse::<usize>().unwrap_or(size - 1).min(size - 1),
        _ => size - 1,
    };
    let body = &served[start.min(size)..=end.min(size - 1)];
    let extra = format!(
        "{tag}X-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {start}-{end}/{size}\r\nAccept-Ranges: bytes\r\n"
    );
    let cut = if end + 1 == size && body.len() > 1 {
        st.cut_once.remove(&file)
    } else {
        None
    };
    drop(st);
    match cut {
        Some(n) => {
            // Promise the whole body, send part of it, hang up.
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body[..n.min(body.len())])?;
            conn.flush()?;
            conn.shutdown(std::net::Shutdown::Both)
        }
        None => reply(&mut conn, "206 Partial Content", &extra, body),
    }
}

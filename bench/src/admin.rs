//! Seeding hablar-server through its admin API: `PUT` chats and members over a few
//! keep-alive HTTP/1.1 connections (a minimal client: the server answers with
//! `Content-Length` bodies, and seeding 10,000 members must take seconds, not minutes).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// The layout of a scenario: `chats` chats named `{prefix}{i}`, each with `members`
/// members; member `k` of chat `i` is user `u{i·members + k}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Chat id prefix (one per layout, so layouts never share a chat).
    pub prefix: String,
    /// Number of chats.
    pub chats: usize,
    /// Members per chat.
    pub members: usize,
}

impl Layout {
    /// The id of chat `i`.
    pub fn chat(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// The user id of member `k` of chat `i`.
    pub fn user(&self, i: usize, k: usize) -> String {
        format!("u{}", i * self.members + k)
    }

    /// Every (chat, user) pair, chat by chat.
    pub fn memberships(&self) -> impl Iterator<Item = (String, String)> + '_ {
        (0..self.chats).flat_map(move |i| (0..self.members).map(move |k| (self.chat(i), self.user(i, k))))
    }
}

/// Creates the chats and memberships of `layout` on the server at `addr`.
pub async fn seed(addr: SocketAddr, admin_key: &str, layout: &Layout) -> Result<()> {
    let mut paths: Vec<String> = (0..layout.chats)
        .map(|i| format!("/api/admin/chats/{}", layout.chat(i)))
        .collect();
    // Chats first (a member of a missing chat is a 404), then members in parallel.
    run_puts(addr, admin_key, std::mem::take(&mut paths), 8).await?;
    let members = layout
        .memberships()
        .map(|(chat, user)| format!("/api/admin/chats/{chat}/members/{user}"))
        .collect();
    run_puts(addr, admin_key, members, 8).await
}

async fn run_puts(addr: SocketAddr, key: &str, paths: Vec<String>, parallel: usize) -> Result<()> {
    let chunk = paths.len().div_ceil(parallel).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for part in paths.chunks(chunk) {
        let part = part.to_vec();
        let key = key.to_owned();
        tasks.spawn(async move {
            let mut conn = BufReader::new(TcpStream::connect(addr).await?);
            for path in part {
                put(&mut conn, &key, &path).await?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::Admin(format!("seeding task failed: {e}")))??;
    }
    Ok(())
}

async fn put(conn: &mut BufReader<TcpStream>, key: &str, path: &str) -> Result<()> {
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    conn.get_mut().write_all(request.as_bytes()).await?;
    // Read the head byte by byte up to the blank line (buffered, so this is cheap).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = conn.read_u8().await?;
        head.push(byte);
        if head.len() > 16 * 1024 {
            return Err(Error::Admin("response head too long".into()));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Admin("no status line".into()))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    if !(200..300).contains(&status) {
        return Err(Error::Admin(format!("PUT {path}: HTTP {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_chats_and_gives_each_member_its_own_user() {
        let layout = Layout {
            prefix: "fb".into(),
            chats: 3,
            members: 2,
        };
        let all: Vec<_> = layout.memberships().collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], ("fb0".to_owned(), "u0".to_owned()));
        assert_eq!(all[5], ("fb2".to_owned(), "u5".to_owned()));
    }
}

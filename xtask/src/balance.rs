//! `cargo xtask balance LISTEN NODE...`: a round-robin TCP load balancer for trying a cluster
//! on one machine. Each new connection goes to the next node that accepts it, so when a node
//! dies, browsers reconnect through the same address and land on a live one. It has no
//! stickiness (Web-IM needs none). A demo tool, not a production proxy.

use crate::util::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// Parses the arguments and runs until interrupted.
pub fn main(args: &[String]) -> Result<()> {
    let [listen, nodes @ ..] = args else {
        return Err("usage: cargo xtask balance LISTEN_ADDR NODE_ADDR...".into());
    };
    let parse = |a: &String| {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("`{a}` is not an address: {e}"))
    };
    let listen = parse(listen)?;
    let nodes = nodes.iter().map(parse).collect::<Result<Vec<_>>>()?;
    if nodes.is_empty() {
        return Err("name at least one node".into());
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        println!("balancing http://{listen} over {nodes:?}");
        serve(listener, Arc::new(nodes)).await;
        Ok(())
    })
}

/// Accepts forever, handing each connection to the next live node.
async fn serve(listener: TcpListener, nodes: Arc<Vec<SocketAddr>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (nodes, next) = (nodes.clone(), next.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Some(node) = connect_next(&nodes, &next).await else {
                return; // no node is up: the client sees the connection close
            };
            let _ = node.set_nodelay(true);
            let (mut client, mut node) = (client, node);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
    }
}

/// Tries the nodes in round-robin order, starting after the last one used.
async fn connect_next(nodes: &[SocketAddr], next: &AtomicUsize) -> Option<TcpStream> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    for i in 0..nodes.len() {
        if let Ok(s) = TcpStream::connect(nodes[(start + i) % nodes.len()]).await {
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A node that answers every connection with its own name.
    async fn node(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn spreads_connections_and_skips_dead_nodes() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap() // dropped: nothing listens there any more
        };
        let nodes = vec![node("a").await, dead, node("b").await];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(nodes)));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            s.read_to_string(&mut name).await.unwrap();
            seen.push(name);
        }
        assert!(seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()));
        assert!(seen.iter().all(|n| n == "a" || n == "b"), "{seen:?}");
    }
}

//! A minimal WebSocket listener for trying herald by hand: connects to the URL given and
//! prints every text frame, answering pings, until the server closes.
//!
//! `cargo run --example listen -- "ws://127.0.0.1:8080/websocket/u1?token=..."`

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: listen ws://HOST:PORT/websocket/USER?token=..."))?;
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            anyhow::bail!("refused with HTTP {}: {}", resp.status(), body.trim());
        }
        Err(e) => anyhow::bail!("cannot connect: {e}"),
    };
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => println!("{t}"),
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                eprintln!("closed by the server with code {code}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

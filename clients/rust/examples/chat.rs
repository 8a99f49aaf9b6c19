//! Two clients exchange messages through a running stack (start one with `scripts/local.sh`):
//!
//! ```text
//! cargo run -p rtc-client --example chat -- 127.0.0.1:8080
//! ```
//!
//! alice and bob connect through the gateway, each sends the other three messages, and each
//! prints what it receives: the sender, the text and the offset a resume would start from.

use rtc_client::{Client, Event, Options};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), rtc_client::Error> {
    let gateway = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // Unique names per run, so a second run does not resume the first one's conversation.
    let run = std::process::id();
    let (a, b) = (format!("alice-{run}"), format!("bob-{run}"));
    let mut alice = Client::connect(Options::new(&gateway, &a)).await?;
    let mut bob = Client::connect(Options::new(&gateway, &b)).await?;
    println!("{a} is on {}, {b} is on {}", alice.node(), bob.node());

    for i in 1..=3 {
        alice
            .send(&b, &serde_json::json!({ "text": format!("hi bob, #{i}") }))
            .await?;
        bob.send(
            &a,
            &serde_json::json!({ "text": format!("hello alice, #{i}") }),
        )
        .await?;
    }
    for (name, client) in [(&a, &mut alice), (&b, &mut bob)] {
        let (mut got, mut acked) = (0, 0);
        while got < 3 || acked < 3 {
            match client.next_event(Duration::from_secs(10)).await? {
                Event::Msg(m) => {
                    got += 1;
                    let text: serde_json::Value = m.data_as().unwrap_or_default();
                    println!(
                        "{name} <- {}: {} (offset {:?})",
                        m.from, text["text"], m.offset
                    );
                }
                Event::Ack { .. } => acked += 1,
                Event::Error { message, .. } => eprintln!("{name}: refused: {message}"),
                Event::Welcome { node, .. } => println!("{name} reconnected to {node}"),
                _ => {}
            }
        }
        println!(
            "{name}: 3 received, 3 acked, resume offset {:?}",
            client.offset()
        );
    }
    alice.close().await?;
    bob.close().await
}

//! The event log: ordered, resumable, and followable.

use std::time::Duration;

use futures::StreamExt;

use crate::harness::{Server, TOKEN, fast_sim_config};

#[tokio::test]
async fn resuming_from_the_last_seen_sequence_loses_nothing_and_repeats_nothing() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("first").await;
    let before = server.events_since(0).await;
    assert!(before.iter().any(|event| event["type"] == "template.created"));
    let seqs: Vec<i64> = before.iter().map(|event| event["seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "ascending: {seqs:?}");
    let last = *seqs.last().expect("some events");

    server.create_template("second").await;
    server.create_template("third").await;
    let after = server.events_since(last).await;
    assert!(after.iter().all(|event| event["seq"].as_i64().expect("seq") > last));
    let created: Vec<&str> = after
        .iter()
        .filter(|event| event["type"] == "template.created")
        .map(|event| event["data"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(created, vec!["second", "third"]);
    let all = server.events_since(0).await;
    assert_eq!(all.len(), before.len() + after.len(), "the two reads together are the whole log");
}

#[tokio::test]
async fn following_streams_new_events_as_they_commit() {
    let server = Server::start(&fast_sim_config()).await;
    let last = server.events_since(0).await.last().map_or(0, |event| event["seq"].as_i64().expect("seq"));
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events?since={last}&follow=true", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    let mut body = response.bytes_stream();
    server.create_template("streamed").await;
    let mut buffer = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if buffer.contains("\"streamed\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the new event arrived on the open stream: {buffer}");
}

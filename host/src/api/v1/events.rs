//! The event log as a stream: NDJSON (default) or server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::QueryParams;
use crate::auth::Caller;
use crate::model::Event;
use crate::service::Service;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventParams {
    /// Only events with a sequence number greater than this (default 0: from the start).
    since: Option<i64>,
    /// Keep the stream open and send new events as they happen.
    #[serde(default)]
    follow: bool,
    /// Stop after this many events.
    limit: Option<u64>,
}

/// Events after `since`, oldest first, one JSON object per line. Resuming from the last `seq`
/// seen loses nothing. `Accept: text/event-stream` answers server-sent events instead (and
/// honours `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams),
    responses((status = 200, description = "NDJSON stream of events", body = Event, content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody)))]
pub(super) async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<EventParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let last_event_id =
        headers.get("last-event-id").and_then(|value| value.to_str().ok()).and_then(|id| id.parse().ok());
    let since = params.since.or(last_event_id).unwrap_or(0);
    if since < 0 {
        return Err(ApiError::invalid(format!("since must be >= 0, got {since}")));
    }
    // Fails now, with 403, rather than as an empty stream.
    state.service.events_after(&caller, since, 1).await?;
    let events = event_stream(state.service.clone(), caller, since, params.follow);
    let events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>> = match params.limit {
        Some(limit) => Box::pin(events.take(limit as usize)),
        None => Box::pin(events),
    };
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if wants_sse {
        let events = events.map(|event| {
            Ok::<_, Infallible>(
                SseEvent::default()
                    .id(event.seq.to_string())
                    .event(event.kind.clone())
                    .json_data(&event)
                    .unwrap_or_else(|_| SseEvent::default().comment("unserializable event")),
            )
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response());
    }
    let lines = events.map(|event| {
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        Ok::<_, Infallible>(line)
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

struct Cursor {
    service: Service,
    caller: Caller,
    after: i64,
    buffer: VecDeque<Event>,
    follow: bool,
}

/// Reads the log in pages; when caught up, either ends or (following) waits for the next
/// commit. The watch is marked seen before each read, so no commit can slip between.
fn event_stream(service: Service, caller: Caller, since: i64, follow: bool) -> impl Stream<Item = Event> + Send {
    let cursor = Cursor { service, caller, after: since, buffer: VecDeque::new(), follow };
    futures::stream::unfold(cursor, |mut cursor| async move {
        let mut watch = cursor.service.watch_events();
        let stopping = cursor.service.stopping();
        loop {
            if let Some(event) = cursor.buffer.pop_front() {
                cursor.after = event.seq;
                return Some((event, cursor));
            }
            watch.borrow_and_update();
            match cursor.service.events_after(&cursor.caller, cursor.after, 500).await {
                Ok((events, last)) if last > cursor.after => {
                    cursor.after = last;
                    cursor.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "event stream ended by a read failure");
                    return None;
                }
            }
            if !cursor.follow {
                return None;
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return None },
                _ = stopping.cancelled() => return None,
            }
        }
    })
}

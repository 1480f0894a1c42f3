//! `/v1/events`: pages of the global log, and live subscriptions over SSE.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::metrics::Metrics;
use super::problem::ApiError;
use super::render::{EventView, event_view, event_views};
use super::request::QueryPairs;
use crate::store::{EventFilter, RecordedEvent};

fn filter(query: &QueryPairs) -> EventFilter {
    EventFilter {
        event_types: query.all("event_type"),
        aggregate_types: query.all("aggregate_type"),
    }
}

/// Typed, so event data goes out as the stored text (see `render`).
#[derive(Serialize)]
struct LogPageView<'a> {
    events: Vec<EventView<'a>>,
    next_position: u64,
    head: u64,
}

pub async fn page(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(query.as_deref())?;
    let from = query.number("from")?.unwrap_or(1);
    let limit = query.limit()?;
    let page = app.store.read_all(from, limit, &filter(&query))?;
    let body = LogPageView {
        events: event_views(&page.events),
        next_position: page.next_position,
        head: page.head,
    };
    Ok(Json(body).into_response())
}

/// Counts a subscriber for as long as its stream lives.
struct SubscriberGauge(Arc<Metrics>);

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.subscriber_closed();
    }
}

/// Where a subscription starts.
enum Start {
    /// At this position (catching up on what is already recorded).
    At(u64),
    /// After the current head: only events recorded from now on.
    End,
}

/// `from`: a position (default 1, the start of the log) or `end`.
fn start(query: &QueryPairs) -> Result<Start, ApiError> {
    match query.get("from") {
        Some("end") => Ok(Start::End),
        _ => Ok(Start::At(
            query
                .number("from")
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_request",
                        "query parameter from must be a position (a non-negative integer) or end",
                    )
                })?
                .unwrap_or(1),
        )),
    }
}

/// One recorded event as an SSE message: `id` its position, `event` its type,
/// `data` the event.
fn message(event: &RecordedEvent) -> Event {
    let message = Event::default().id(event.position.to_string());
    // Event types are checked on append; one recorded by an early release with a
    // line break cannot be an SSE field, and goes without (its data names it).
    let message = if event.event_type.contains(['\r', '\n']) {
        message
    } else {
        message.event(&event.event_type)
    };
    message.data(serde_json::to_string(&event_view(event)).expect("an event view serializes"))
}

/// Catches up from `from` (or just after `Last-Event-ID`), then follows live;
/// `from=end` skips the catch-up. Each SSE message's id is the event's
/// position and its `event` the event type; a stream failure is `event:
/// error` without an id. A `from=end` subscription begins with a message that
/// has only an id, the head it starts after, so a client that reconnects with
/// `Last-Event-ID` misses nothing even if no event came before the drop.
pub async fn subscribe(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let query = QueryPairs::parse(query.as_deref())?;
    // Checked even when Last-Event-ID overrides it: a bad request is a 400
    // whichever part wins.
    let start = start(&query)?;
    let resume_after = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        "Last-Event-ID must be the position of the last event received",
                    )
                })?,
        ),
        None => None,
    };
    let (from, marker) = match resume_after {
        Some(last) => (
            last.checked_add(1).ok_or_else(|| {
                ApiError::bad_request("invalid_request", "Last-Event-ID is past any position")
            })?,
            None,
        ),
        None => match start {
            Start::At(from) => (from, None),
            // Durable events only ever come after the durable head read here.
            Start::End => {
                let head = app.store.head();
                (head + 1, Some(Event::default().id(head.to_string())))
            }
        },
    };
    app.metrics.subscriber_opened();
    let gauge = SubscriberGauge(app.metrics.clone());
    let mut shutdown = app.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let events = app.store.subscribe(from, filter(&query)).map(move |item| {
        let _alive = &gauge;
        Ok(match item {
            Ok(event) => message(&event),
            // A read failure ends nothing silently: the client sees it and can resume.
            Err(err) => Event::default()
                .event("error")
                .data(json!({"code": err.code(), "detail": err.to_string()}).to_string()),
        })
    });
    let events = futures::stream::iter(marker.map(Ok))
        .chain(events)
        .take_until(stopped);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

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
use crate::store::EventFilter;

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

/// Catches up from `from` (or just after `Last-Event-ID`), then follows live.
/// Each SSE message's id is the event's position.
pub async fn subscribe(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let query = QueryPairs::parse(query.as_deref())?;
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
    let from = match resume_after {
        Some(last) => last.checked_add(1).ok_or_else(|| {
            ApiError::bad_request("invalid_request", "Last-Event-ID is past any position")
        })?,
        None => query.number("from")?.unwrap_or(1),
    };
    app.metrics.subscriber_opened();
    let gauge = SubscriberGauge(app.metrics.clone());
    let mut shutdown = app.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let events = app
        .store
        .subscribe(from, filter(&query))
        .take_until(stopped)
        .map(move |item| {
            let _alive = &gauge;
            Ok(match item {
                Ok(event) => Event::default().id(event.position.to_string()).data(
                    serde_json::to_string(&event_view(&event)).expect("an event view serializes"),
                ),
                // A read failure ends nothing silently: the client sees it and can resume.
                Err(err) => Event::default()
                    .event("error")
                    .data(json!({"code": err.code(), "detail": err.to_string()}).to_string()),
            })
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

//! `events --follow`: prints events as the server records them, from
//! `/v1/events/subscribe` (`--from-end`: only those recorded from now on). A
//! dropped connection is resumed with `Last-Event-ID` set to the last printed
//! position (or the head a `--from-end` subscription started after), so
//! nothing is skipped; positions only grow, so anything at or below it is a
//! repeat and is dropped.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::client::{Client, Failure, Problem, root_cause};
use super::output::{self, text};
use super::sse;

/// Reconnections in a row before giving up.
const MAX_RECONNECTS: u32 = 10;
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// The server sends a keep-alive comment every 15s; silence this long means a
/// half-open connection that would otherwise hang forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection that stayed up this long was healthy, even if idle.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// How one connection ended.
enum End {
    LimitReached,
    /// `healthy`: it delivered events or stayed up a while, so the retry
    /// budget starts over; the budget is for a server that stays away.
    Lost {
        reason: String,
        healthy: bool,
    },
}

/// What one message asks for.
#[derive(Debug, PartialEq)]
enum Step {
    Continue,
    LimitReached,
    /// The server reported a failure in the stream (`event: error`).
    ServerError(String),
}

struct Follower {
    json: bool,
    from: Option<u64>,
    /// Only events recorded after the subscription starts (`from=end`).
    from_end: bool,
    limit: Option<u64>,
    printed: u64,
    last_position: Option<u64>,
}

pub(crate) async fn follow(
    client: &Client,
    json: bool,
    from: Option<u64>,
    from_end: bool,
    limit: Option<u64>,
) -> Result<(), Failure> {
    let mut follower = Follower {
        json,
        from,
        from_end,
        limit,
        printed: 0,
        last_position: None,
    };
    if limit == Some(0) {
        return Ok(());
    }
    let mut reconnects = 0;
    loop {
        match follower.session(client).await? {
            End::LimitReached => return Ok(()),
            End::Lost { reason, healthy } => {
                if healthy {
                    reconnects = 0;
                }
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    return Err(client.unreachable(reason));
                }
                let delay = backoff(reconnects);
                eprintln!(
                    "warning: event stream lost ({reason}); reconnecting in {:.1}s (attempt {reconnects}/{MAX_RECONNECTS})",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// 0.2s, 0.4s, 0.8s, 1.6s, then 2s.
fn backoff(attempt: u32) -> Duration {
    let doubled = FIRST_DELAY.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    doubled.min(MAX_DELAY)
}

impl Follower {
    /// One connection, until it drops or the limit is reached. `Err` is final:
    /// the server refused the subscription, or stdout is gone.
    async fn session(&mut self, client: &Client) -> Result<End, Failure> {
        let mut query = Vec::new();
        match (self.last_position, self.from) {
            (Some(_), _) => {} // Last-Event-ID below
            (None, _) if self.from_end => query.push(("from", "end".to_owned())),
            (None, Some(from)) => query.push(("from", from.to_string())),
            (None, None) => {}
        }
        let url = client.url(&["v1", "events", "subscribe"], &query)?;
        let mut request = client
            .request(Method::GET, &url)
            .header(ACCEPT, "text/event-stream");
        if let Some(position) = self.last_position {
            request = request.header("Last-Event-ID", position.to_string());
        }
        let lost = |reason: String| End::Lost {
            reason,
            healthy: false,
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return match client.transport(e) {
                    Failure::Unreachable { reason, .. } => Ok(lost(reason)),
                    other => Err(other),
                };
            }
        };
        let status = response.status();
        if !status.is_success() {
            // A restarting server or its proxy answers these briefly.
            if matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) {
                return Ok(lost(format!("HTTP {status}")));
            }
            let body = response.text().await.unwrap_or_default();
            return Err(Failure::Problem(Problem::from_response(status, &body)));
        }

        let connected = Instant::now();
        let printed_before = self.printed;
        let mut parser = sse::Parser::default();
        loop {
            let reason = match tokio::time::timeout(IDLE_TIMEOUT, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    let mut out = io::stdout().lock();
                    let mut server_error = None;
                    for message in parser.feed(&chunk) {
                        match self.handle(&mut out, message).map_err(Failure::Output)? {
                            Step::Continue => {}
                            Step::LimitReached => return Ok(End::LimitReached),
                            Step::ServerError(reason) => {
                                server_error = Some(reason);
                                break;
                            }
                        }
                    }
                    match server_error {
                        Some(reason) => reason,
                        None => continue,
                    }
                }
                Ok(Ok(None)) => "the server closed the stream".to_owned(),
                Ok(Err(e)) => root_cause(&e),
                Err(_) => format!("nothing heard for {}s", IDLE_TIMEOUT.as_secs()),
            };
            let healthy = self.printed > printed_before || connected.elapsed() >= HEALTHY_AFTER;
            return Ok(End::Lost { reason, healthy });
        }
    }

    /// Prints one event unless it is a repeat.
    fn handle(&mut self, out: &mut dyn Write, message: sse::Message) -> io::Result<Step> {
        let id = message
            .id
            .as_deref()
            .and_then(|id| id.trim().parse::<u64>().ok());
        let Some(data) = message.data else {
            // An id alone: the head a `from=end` subscription starts after.
            // Nothing to print, but a reconnect resumes after it.
            if let Some(position) = id
                && self.last_position.is_none_or(|last| position > last)
            {
                self.last_position = Some(position);
            }
            return Ok(Step::Continue);
        };
        // A stream failure has no id; an event (whose `event:` is its type,
        // which may well be "error") always has its position.
        if message.event.as_deref() == Some("error") && message.id.is_none() {
            // Resuming from the last printed position is the remedy the
            // server expects ("the client sees it and can resume").
            let problem: Option<Value> = serde_json::from_str(&data).ok();
            let reason = match &problem {
                Some(e) => format!("server error {}: {}", text(&e["code"]), text(&e["detail"])),
                None => format!("server error: {data}"),
            };
            return Ok(Step::ServerError(reason));
        }
        let event = serde_json::from_str::<output::EventText>(&data).ok();
        let position = id.or_else(|| event.as_ref().and_then(output::EventText::position));
        if let (Some(position), Some(last)) = (position, self.last_position)
            && position <= last
        {
            return Ok(Step::Continue);
        }
        match &event {
            Some(event) if !self.json => output::event_line(out, event)?,
            // With --json, or if the data is not JSON, show it exactly as sent.
            _ => writeln!(out, "{data}")?,
        }
        out.flush()?;
        if position.is_some() {
            self.last_position = position;
        }
        self.printed += 1;
        Ok(if self.limit.is_some_and(|limit| self.printed >= limit) {
            Step::LimitReached
        } else {
            Step::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<u128> = (1..=6).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn drops_repeats_after_a_reconnect() {
        let mut f = Follower {
            json: true,
            from: None,
            from_end: false,
            limit: Some(3),
            printed: 0,
            last_position: None,
        };
        let mut out = Vec::new();
        let msg = |id: &str| sse::Message {
            id: Some(id.to_owned()),
            event: Some("Deposited".to_owned()),
            data: Some(format!("{{\"position\":{id}}}")),
        };
        let mut step = |m| f.handle(&mut out, m).expect("in memory");
        let marker = sse::Message {
            id: Some("4".to_owned()),
            event: None,
            data: None,
        };
        assert_eq!(step(marker), Step::Continue, "a marker prints nothing");
        assert_eq!(step(msg("4")), Step::Continue, "at or below the marker");
        assert_eq!(step(msg("5")), Step::Continue);
        assert_eq!(step(msg("5")), Step::Continue);
        let typed_error = sse::Message {
            event: Some("error".to_owned()),
            ..msg("6")
        };
        assert_eq!(
            step(typed_error),
            Step::Continue,
            "an event of type error is an event"
        );
        let error = sse::Message {
            id: None,
            event: Some("error".to_owned()),
            data: Some(r#"{"code":"lagged","detail":"too slow"}"#.to_owned()),
        };
        assert_eq!(
            step(error),
            Step::ServerError("server error lagged: too slow".to_owned())
        );
        assert_eq!(step(msg("7")), Step::LimitReached);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "{\"position\":5}\n{\"position\":6}\n{\"position\":7}\n"
        );
        assert_eq!(f.last_position, Some(7));
    }
}

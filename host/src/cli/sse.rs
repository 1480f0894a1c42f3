//! A Server-Sent Events parser (the WHATWG "event stream" format), fed with
//! bytes as they arrive: chunks may split lines, and even `\r\n`, anywhere.

/// One dispatched message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// The `id:` field of this message, if it had one.
    pub id: Option<String>,
    /// The `event:` field (the type), if it had one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; None for a message with an id and no
    /// data, which a browser dispatches to no listener but which still sets the
    /// id to resume after (the server's place marker for `from=end`).
    pub data: Option<String>,
}

#[derive(Default)]
pub(crate) struct Parser {
    line: Vec<u8>,
    /// The previous byte ended a line with `\r`; a `\n` right after belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Parser {
    /// Consumes `chunk` and returns the messages it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Message> {
        let mut messages = Vec::new();
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    if let Some(message) = self.end_line() {
                        messages.push(message);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
        messages
    }

    fn end_line(&mut self) -> Option<Message> {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment: keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {} // retry and unknown fields: nothing we act on
        }
        None
    }

    /// A blank line ends a message; one with neither data nor id is not dispatched.
    fn dispatch(&mut self) -> Option<Message> {
        let id = self.id.take();
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return id.map(|id| Message {
                id: Some(id),
                event: None,
                data: None,
            });
        }
        Some(Message {
            id,
            event,
            data: Some(std::mem::take(&mut self.data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, data: &str) -> Message {
        Message {
            id: Some(id.to_owned()),
            event: None,
            data: Some(data.to_owned()),
        }
    }

    #[test]
    fn parses_messages_and_skips_comments() {
        let mut p = Parser::default();
        let got = p.feed(
            b": keep-alive\n\nid: 17\ndata: {\"a\":1}\n\nid:18\ndata:x\ndata: y\n\nevent: error\ndata: {}\n\nid: 19\n\nevent: x\n\nid: 20\nevent: Deposited\ndata: z\n\n",
        );
        let error = Message {
            id: None,
            event: Some("error".to_owned()),
            data: Some("{}".to_owned()),
        };
        let marker = Message {
            id: Some("19".to_owned()),
            event: None,
            data: None,
        };
        let typed = Message {
            event: Some("Deposited".to_owned()),
            ..message("20", "z")
        };
        assert_eq!(
            got,
            vec![
                message("17", "{\"a\":1}"),
                message("18", "x\ny"),
                error,
                marker,
                typed
            ]
        );
    }

    #[test]
    fn survives_any_chunking_and_line_ending() {
        let stream = b"id: 1\r\ndata: one\r\n\r\n:ping\rid: 2\rdata: two\r\rid: 3\ndata: three\n\n";
        let want = vec![
            message("1", "one"),
            message("2", "two"),
            message("3", "three"),
        ];
        for split in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = p.feed(&stream[..split]);
            got.extend(p.feed(&stream[split..]));
            assert_eq!(got, want, "split at {split}");
        }
        // One byte at a time.
        let mut p = Parser::default();
        let got: Vec<_> = stream.iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn holds_an_unfinished_message() {
        let mut p = Parser::default();
        assert!(p.feed(b"id: 4\ndata: par").is_empty());
        assert_eq!(p.feed(b"tial\n\n"), vec![message("4", "partial")]);
    }
}

//! Spinners and colours, only on a terminal (and colours not with `NO_COLOR`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether stderr is a terminal: spinners go there.
pub(crate) fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

fn colours_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn stdout_colours() -> bool {
    std::io::stdout().is_terminal() && colours_allowed()
}

pub(crate) fn stderr_colours() -> bool {
    stderr_is_tty() && colours_allowed()
}

/// ANSI styles, as SGR parameters.
pub(crate) const BOLD_GREEN: &str = "1;32";
pub(crate) const BOLD_RED: &str = "1;31";
pub(crate) const BOLD_YELLOW: &str = "1;33";
pub(crate) const BOLD: &str = "1";
pub(crate) const DIM: &str = "2";

/// `text` in `style` when `enabled`, else as is.
pub(crate) fn paint(enabled: bool, style: &str, text: &str) -> String {
    if enabled {
        format!("\x1b[{style}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints `error: message` on stderr, the label in red on a terminal.
pub(crate) fn error(message: &str) {
    eprintln!("{} {message}", paint(stderr_colours(), BOLD_RED, "error:"));
}

pub(crate) fn note(message: &str) {
    eprintln!(
        "{} {message}",
        paint(stderr_colours(), BOLD_YELLOW, "note:")
    );
}

/// A spinner on stderr with `message`, ticking on its own; a hidden one when
/// stderr is not a terminal (then `println` must go to stderr directly).
pub(crate) fn spinner(message: String) -> ProgressBar {
    if !stderr_is_tty() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner:.green} {msg} {elapsed:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// `1.2 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    let b = bytes as f64; // shown to one decimal
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{:.1} MiB", b / 1_048_576.0),
    }
}

# shellcheck shell=bash
# Helpers shared by the example scripts (bank.sh, shop.sh). Sourced, not run.
#
# Environment:
#   REFOLD_SERVER  the server (default http://127.0.0.1:7700)
#   REFOLD_BIN     the refold binary (default: `refold` on PATH)
#   REFOLD_TOKEN   a bearer token, if the server wants one (the CLI reads it too)

: "${REFOLD_SERVER:=http://127.0.0.1:7700}"
export REFOLD_SERVER
REFOLD="${REFOLD_BIN:-refold}"

# Ids made unique per run, so a script can run again against the same server.
RUN_ID="$(date +%s)-$$"

fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

# A narration line before each step.
step() {
    printf '\n== %s\n' "$*"
}

# Prints a command line the way you would type it.
show() {
    local line="\$" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@+,-]+$ ]]; then
            line+=" $arg"
        else
            line+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "$line"
}

# Runs `refold ARGS...`, showing the command first. A failure ends the script.
rf() {
    show refold "$@"
    "$REFOLD" "$@"
}

# Like rf, and keeps the output in OUT for `expect`.
capture() {
    show refold "$@"
    OUT="$("$REFOLD" "$@")"
    printf '%s\n' "$OUT"
}

# expect REGEX WHAT: the last captured output must match REGEX (grep -E).
expect() {
    grep -qE -- "$1" <<<"$OUT" || fail "$2 (expected /$1/ in the output above)"
}

# The numbers N of every `"KEY": N` in JSON text on stdin, one a line.
json_numbers() {
    { grep -oE "\"$1\": ?-?[0-9]+" || true; } | grep -oE -- '-?[0-9]+$' || true
}

# The gist of a successful --json send reply: version, position and events.
reply_summary() {
    local version position events
    version="$(json_numbers version <<<"$1" | sort -n | tail -n 1)"
    position="$(json_numbers position <<<"$1" | sort -n | tail -n 1)"
    events="$({ grep -oE '"event_type": ?"[^"]*"' <<<"$1" || true; } | cut -d'"' -f4 | paste -sd, -)"
    printf '  (reply: "version": %s, "position": %s, events: %s)\n' "$version" "$position" "${events:-none}"
}

# send_at TYPE ID JSON [FLAGS...]: sends a command with --json and sets
# POSITION to the reply's "position" (its last event's place in the global
# log): what a projection read waits for with --min-position.
send_at() {
    show refold --json send "$@"
    local reply
    reply="$("$REFOLD" --json send "$@")"
    reply_summary "$reply"
    POSITION="$(json_numbers position <<<"$reply" | sort -n | tail -n 1)"
    [[ -n $POSITION ]] || fail "the reply carries no position"
}

# refused CODE ARGS...: runs `refold --json ARGS...`, which must fail with the
# domain's CODE (the problem's "reason"); otherwise the script fails.
refused() {
    local code="$1" out status=0
    shift
    show refold --json "$@"
    out="$("$REFOLD" --json "$@" 2>&1)" || status=$?
    printf '%s\n' "$out"
    [[ $status -ne 0 ]] || fail "expected a refusal with $code, but the command succeeded"
    [[ $out == *"$code"* ]] || fail "expected a refusal with $code, got exit code $status without it"
    printf '(refused as expected: %s, exit code %s)\n' "$code" "$status"
}

# api_get PATH: GETs PATH from the server's HTTP API, for what the CLI has no
# command for; keeps the body in OUT.
api_get() {
    show curl -fsS "$REFOLD_SERVER$1"
    local auth=()
    if [[ -n ${REFOLD_TOKEN:-} ]]; then
        auth=(-H "Authorization: Bearer $REFOLD_TOKEN")
    fi
    OUT="$(curl -fsS "${auth[@]}" "$REFOLD_SERVER$1")"
}

# print_stream_events JSON: prints the events of a stream's page (GET
# /v1/aggregates/{type}/{id}/events), one a line; the raw JSON if python3 is
# not there to read it.
print_stream_events() {
    local page="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
for e in json.loads(sys.argv[1])["events"]:
    m = e.get("metadata", {})
    print("  v%s  position %-4s %-10s %-40s by %s" % (
        e["version"], e["position"], e["event_type"],
        json.dumps(e["data"], sort_keys=True, separators=(",", ":")), m.get("producer", "?")))
' "$page"
    else
        printf '%s\n' "$page"
    fi
}

# Says which refold and which server, and checks the server is there.
preflight() {
    local path
    path="$(command -v "$REFOLD" || true)"
    if [[ -z $path ]]; then
        echo "error: cannot find the refold binary ($REFOLD)" >&2
        echo "hint: cargo build --release -p refold, then REFOLD_BIN=target/release/refold" >&2
        exit 1
    fi
    echo "refold: $path ($("$REFOLD" --version))"
    echo "server: $REFOLD_SERVER"
    echo "run id: $RUN_ID"
    if ! curl -fsS "$REFOLD_SERVER/healthz" >/dev/null 2>&1; then
        echo "error: no refold server answers at $REFOLD_SERVER" >&2
        echo "hint: start one with the examples loaded: refold serve --examples modules" >&2
        exit 1
    fi
}

# require_modules NAME...: each module must be on the server.
require_modules() {
    local list name
    list="$("$REFOLD" module list)"
    for name in "$@"; do
        if ! grep -qE "^$name " <<<"$list"; then
            printf '%s\n' "$list"
            echo "error: the module $name is not on the server" >&2
            echo "hint: start the server with: refold serve --examples modules" >&2
            exit 1
        fi
    done
}

#!/usr/bin/env bash
# The bank story, against a running server with the examples loaded
# (`refold serve --examples modules`: bank-account@1.0.0 and the
# account-balances@1.0.0 projection):
#
#   accounts, deposits and withdrawals; an overdraft refused; a retried command
#   recorded once; balances read from a projection (reading your own writes);
#   an audit of one account's history and its state as of an earlier version;
#   then account-balances@2.0.0 replayed over the whole history beside the live
#   version, compared with it, and promoted.
#
# Environment: REFOLD_SERVER, REFOLD_BIN, REFOLD_TOKEN (see lib.sh), and
# ACCOUNT_BALANCES_V2_WASM: the account-balances-v2 component; without it the
# script builds modules/account-balances-v2 with cargo.
#
# Amounts are in cents. Ids end with a per-run suffix: run it as often as you like.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

preflight
require_modules bank-account account-balances

ALICE="alice-$RUN_ID"
BOB="bob-$RUN_ID"

step "The balances projection is up to date with the log"
rf projection status account-balances --wait

step "Alice opens an account"
rf send bank-account "$ALICE" '{"type":"Open","owner":"Alice"}'

step "Bob opens one with an overdraft limit of 50.00"
rf send bank-account "$BOB" '{"type":"Open","owner":"Bob","overdraft_limit":5000}'

step "Alice deposits 100.00, then withdraws 30.00 and 65.00"
rf send bank-account "$ALICE" '{"type":"Deposit","amount":10000}'
rf send bank-account "$ALICE" '{"type":"Withdraw","amount":3000}'
rf send bank-account "$ALICE" '{"type":"Withdraw","amount":6500}'

step "Alice withdraws 20.00 with 5.00 left: refused, nothing is written"
refused insufficient-funds send bank-account "$ALICE" '{"type":"Withdraw","amount":2000}'

step "Alice's salary of 25.00 arrives, and the sender retries it with the same idempotency key: recorded once"
rf send bank-account "$ALICE" '{"type":"Deposit","amount":2500}' --key "salary-$RUN_ID"
capture send bank-account "$ALICE" '{"type":"Deposit","amount":2500}' --key "salary-$RUN_ID"
expect 'version 5' "the retry answers with the first deposit's version"

step "Bob deposits 20.00 and withdraws 60.00: within his overdraft, his balance is -40.00"
rf send bank-account "$BOB" '{"type":"Deposit","amount":2000}'
send_at bank-account "$BOB" '{"type":"Withdraw","amount":6000}'
BOB_WITHDRAWN_AT="$POSITION"

step "Bob withdraws 20.00 more, past his overdraft limit: refused"
refused insufficient-funds send bank-account "$BOB" '{"type":"Withdraw","amount":2000}'

step "Balances from the projection, waiting until it has seen Bob's withdrawal (position $BOB_WITHDRAWN_AT)"
capture projection get account-balances "account/$ALICE" --min-position "$BOB_WITHDRAWN_AT"
expect '"balance": ?3000' "Alice has 30.00"
capture projection get account-balances "account/$BOB" --min-position "$BOB_WITHDRAWN_AT"
expect '"balance": ?-4000' "Bob is 40.00 overdrawn"

step "The same through the projection's queries, and the totals over every account"
rf projection query account-balances balance "account=$BOB"
rf projection query account-balances richest limit=3
rf projection get account-balances totals

step "Audit: Alice's history, event by event (GET /v1/aggregates/bank-account/$ALICE/events)"
api_get "/v1/aggregates/bank-account/$ALICE/events"
print_stream_events "$OUT"
withdrawals="$(grep -oE '"event_type": ?"Withdrawn"' <<<"$OUT" | wc -l)"
[[ $withdrawals -eq 2 ]] || fail "Alice's history holds $withdrawals withdrawals, not 2: a refused command must write nothing"

step "Alice's state now"
capture state bank-account "$ALICE"
expect 'version 5' "Alice's account is at version 5"

step "Alice's state as of version 3, after her first withdrawal: folded again from the events"
capture state bank-account "$ALICE" --at-version 3
expect '"balance": ?7000' "Alice had 70.00 at version 3"

# The new projection version: the account-balances-v2 component.
if [[ -n ${ACCOUNT_BALANCES_V2_WASM:-} ]]; then
    V2_WASM="$ACCOUNT_BALANCES_V2_WASM"
else
    root="$(cd "$here/.." && pwd)"
    # A target directory of its own: the projection uses bank-account without
    # its `component` feature, and building that into target/ would overwrite
    # the aggregate's bank_account.wasm there.
    step "Build account-balances-v2 (set ACCOUNT_BALANCES_V2_WASM to skip this)"
    show cargo build --release --target wasm32-wasip2 -p account-balances-v2 --target-dir target/examples-v2
    (cd "$root" && cargo build --release --target wasm32-wasip2 -p account-balances-v2 \
        --target-dir target/examples-v2)
    V2_WASM="$root/target/examples-v2/wasm32-wasip2/release/account_balances_v2.wasm"
fi
[[ -f $V2_WASM ]] || fail "no account-balances-v2 component at $V2_WASM"

step "Upload account-balances@2.0.0: it also counts withdrawals and flags accounts that went low"
# On a second run the server answers "unchanged": the same bytes are already there.
rf module push "$V2_WASM" --name account-balances --version 2.0.0
if "$REFOLD" --json projection status account-balances | grep -qE '"live_version": ?"2\.0\.0"'; then
    echo "(2.0.0 is already live, promoted by an earlier run: the steps below repeat harmlessly)"
fi

step "2.0.0 replays the whole history beside the live version; wait until it has caught up"
rf projection status account-balances --wait

step "Compare the two read models: what would promoting 2.0.0 over 1.0.0 change?"
capture projection diff account-balances 1.0.0 2.0.0 --sample 3
expect 'changed' "the diff summarises the changes"

step "Promote 2.0.0: readers switch to it at once"
for attempt in 1 2 3 4 5; do
    show refold projection promote account-balances 2.0.0
    if out="$("$REFOLD" projection promote account-balances 2.0.0 2>&1)"; then
        printf '%s\n' "$out"
        break
    fi
    printf '%s\n' "$out"
    # Refused while 2.0.0 lags the log (someone else wrote meanwhile): wait and retry.
    [[ $out == *projection_lagging* && $attempt -lt 5 ]] || fail "promote failed"
    "$REFOLD" projection status account-balances --wait >/dev/null
done

step "Alice's balance document, now from 2.0.0: withdrawals counted, and flagged low (5.00 left once)"
capture projection get account-balances "account/$ALICE" --min-position "$BOB_WITHDRAWN_AT"
expect '"withdrawals": ?2' "2.0.0 counts Alice's two withdrawals"
expect '"low": ?true' "2.0.0 flags Alice low"

step "A query only 2.0.0 answers: the accounts flagged low"
capture projection query account-balances low
expect "\"$ALICE\"" "Alice is among the low accounts"

step "The projection's versions"
rf projection status account-balances

printf '\nThe bank story ran to the end.\n'

#!/usr/bin/env bash
# The shop story, against a running server with the examples loaded
# (`refold serve --examples modules`: the inventory and order aggregates and
# the sales projection):
#
#   stock per product (one inventory aggregate each); a reservation that would
#   oversell refused; six customers ordering at the same moment, competing for
#   three widgets; the winners confirmed and shipped, the others compensated
#   and cancelled; and what sold, from the sales projection.
#
# An order cannot see stock (an aggregate decides from its own stream only), so
# this script is the client that runs each order's steps, as modules/order
# describes: Place the order, Reserve each line's stock, then Confirm and Ship,
# or Release what was reserved and Cancel.
#
# Environment: REFOLD_SERVER, REFOLD_BIN, REFOLD_TOKEN (see lib.sh).
# Prices are in cents. Ids end with a per-run suffix: run it as often as you like.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

preflight
require_modules inventory order sales

WIDGET="widget-$RUN_ID"     # scarce: 3 units
GADGET="gadget-$RUN_ID"     # plenty: 10 units
WIDGET_STOCK=3
GADGET_STOCK=10
WIDGET_PRICE=2500
GADGET_PRICE=1200
order_id() { printf 'order-%s-%s' "$RUN_ID" "$1"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "Restock: $WIDGET_STOCK widgets and $GADGET_STOCK gadgets, each product its own inventory aggregate"
rf send inventory "$WIDGET" "{\"type\":\"Restock\",\"quantity\":$WIDGET_STOCK}"
rf send inventory "$GADGET" "{\"type\":\"Restock\",\"quantity\":$GADGET_STOCK}"

DAVE="$(order_id dave)"
step "Dave orders 5 widgets: the order is placed..."
rf send order "$DAVE" "{\"type\":\"Place\",\"customer\":\"Dave\",\"lines\":[{\"product\":\"$WIDGET\",\"quantity\":5,\"unit_price\":$WIDGET_PRICE}]}"

step "...but reserving 5 of $WIDGET_STOCK widgets would oversell: refused"
refused out-of-stock send inventory "$WIDGET" "{\"type\":\"Reserve\",\"order_id\":\"$DAVE\",\"quantity\":5}"

step "So Dave's order is cancelled"
rf send order "$DAVE" '{"type":"Cancel","reason":"out-of-stock"}'

# One customer's order, run in the background: place it, wait at the start
# line, then reserve a gadget and the widgets. Writes what happened to
# $work/N.outcome: "reserved QTY" or "refused QTY".
CUSTOMERS=(Ada Grace Linus Barbara Ken Margaret)
WANTS=(2 1 2 1 2 1)
customer() {
    local n="$1" name="${CUSTOMERS[$1]}" qty="${WANTS[$1]}" id out status
    id="$(order_id "$n")"
    echo "-- $name orders $qty widget(s) and a gadget ($id)"
    rf send order "$id" "{\"type\":\"Place\",\"customer\":\"$name\",\"lines\":[{\"product\":\"$WIDGET\",\"quantity\":$qty,\"unit_price\":$WIDGET_PRICE},{\"product\":\"$GADGET\",\"quantity\":1,\"unit_price\":$GADGET_PRICE}]}"
    touch "$work/$n.ready"
    while [[ ! -e $work/go ]]; do sleep 0.01; done
    rf send inventory "$GADGET" "{\"type\":\"Reserve\",\"order_id\":\"$id\",\"quantity\":1}"
    for _ in 1 2 3 4 5; do
        status=0
        show refold --json send inventory "$WIDGET" "{\"type\":\"Reserve\",\"order_id\":\"$id\",\"quantity\":$qty}"
        out="$("$REFOLD" --json send inventory "$WIDGET" "{\"type\":\"Reserve\",\"order_id\":\"$id\",\"quantity\":$qty}" 2>&1)" || status=$?
        if [[ $status -eq 0 ]]; then
            reply_summary "$out"
        else
            printf '%s\n' "$out"
        fi
        if [[ $status -eq 0 ]]; then
            echo "reserved $qty" >"$work/$n.outcome"
            return
        elif [[ $out == *out-of-stock* ]]; then
            echo "refused $qty" >"$work/$n.outcome"
            return
        elif [[ $out != *'"conflict"'* ]]; then
            fail "$name's reservation failed unexpectedly"
        fi
        # The host gave up retrying a concurrency conflict: try again.
    done
    fail "$name's reservation kept conflicting"
}

step "${#CUSTOMERS[@]} customers order at the same moment: $(IFS=+; echo "${WANTS[*]}") widgets wanted, $WIDGET_STOCK in stock"
pids=()
for n in "${!CUSTOMERS[@]}"; do
    customer "$n" >"$work/$n.log" 2>&1 &
    pids+=("$!")
done
# Every order placed: fire the reservations together.
until [[ $(find "$work" -name '*.ready' | wc -l) -eq ${#CUSTOMERS[@]} ]]; do
    sleep 0.01
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { cat "$work"/*.log; fail "a customer stopped before the start line"; }
    done
done
touch "$work/go"
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
for n in "${!CUSTOMERS[@]}"; do
    cat "$work/$n.log"
done
[[ $failed -eq 0 ]] || fail "a customer's steps failed (see above)"

winners=()
losers=()
reserved=0
for n in "${!CUSTOMERS[@]}"; do
    read -r outcome qty <"$work/$n.outcome"
    if [[ $outcome == reserved ]]; then
        winners+=("$n")
        reserved=$((reserved + qty))
    else
        losers+=("$n")
    fi
done

step "Reserved: ${#winners[@]} orders, $reserved widgets. Refused (out-of-stock): ${#losers[@]} orders"
for n in "${!CUSTOMERS[@]}"; do
    read -r outcome qty <"$work/$n.outcome"
    printf '  %-9s %s widget(s): %s\n' "${CUSTOMERS[$n]}" "$qty" "$outcome"
done
[[ ${#winners[@]} -ge 1 ]] || fail "no order got any widgets"
[[ ${#losers[@]} -ge 1 ]] || fail "every order got its widgets: more than were in stock"
[[ $reserved -le $WIDGET_STOCK ]] || fail "oversold: $reserved widgets reserved of $WIDGET_STOCK"
for n in "${losers[@]}"; do
    # Availability only went down, so each refused order asked for more than is left.
    [[ ${WANTS[$n]} -gt $((WIDGET_STOCK - reserved)) ]] ||
        fail "${CUSTOMERS[$n]} was refused ${WANTS[$n]} widgets with $((WIDGET_STOCK - reserved)) left"
done

step "The widget inventory agrees: every reservation held is one of the winners', none oversold"
capture state inventory "$WIDGET"
expect "\"on_hand\": ?$WIDGET_STOCK" "all $WIDGET_STOCK widgets are still on hand"
held=0
for qty in $(json_numbers "order-$RUN_ID-[0-9]+" <<<"$OUT"); do
    held=$((held + qty))
done
[[ $held -eq $reserved ]] || fail "the inventory holds $held widgets for orders, the customers reserved $reserved"

step "The winners' orders are confirmed and shipped: the stock leaves the shelf"
for n in "${winners[@]}"; do
    id="$(order_id "$n")"
    echo "-- ${CUSTOMERS[$n]}"
    rf send order "$id" '{"type":"Confirm"}'
    rf send inventory "$WIDGET" "{\"type\":\"Ship\",\"order_id\":\"$id\"}"
    rf send inventory "$GADGET" "{\"type\":\"Ship\",\"order_id\":\"$id\"}"
    send_at order "$id" '{"type":"Ship"}'
    LAST_SHIP="$POSITION"
done

step "The others give their gadget back and are cancelled"
for n in "${losers[@]}"; do
    id="$(order_id "$n")"
    echo "-- ${CUSTOMERS[$n]}"
    rf send inventory "$GADGET" "{\"type\":\"Release\",\"order_id\":\"$id\"}"
    rf send order "$id" '{"type":"Cancel","reason":"out-of-stock"}'
done

step "Stock now: $reserved widgets and ${#winners[@]} gadgets shipped, no reservation left"
capture state inventory "$WIDGET"
expect "\"on_hand\": ?$((WIDGET_STOCK - reserved))" "the shipped widgets left the shelf"
expect "\"shipped\": ?$reserved" "the inventory counts $reserved widgets shipped"
expect '"reserved": ?\{\}' "no widget is held any more"
capture state inventory "$GADGET"
expect "\"on_hand\": ?$((GADGET_STOCK - ${#winners[@]}))" "the shipped gadgets left the shelf"
expect '"reserved": ?\{\}' "the refused orders' gadgets were released"

step "What sold, from the sales projection, once it has seen the last shipment (position $LAST_SHIP)"
capture projection get sales "product/$WIDGET" --min-position "$LAST_SHIP"
expect "\"units_sold\": ?$reserved" "the sales count $reserved widgets"
expect "\"revenue\": ?$((reserved * WIDGET_PRICE))" "the widget revenue"
capture projection get sales "product/$GADGET"
expect "\"units_sold\": ?${#winners[@]}" "the sales count ${#winners[@]} gadgets"

step "One shipped order and one cancelled one, as the projection keeps them"
capture projection query sales order "id=$(order_id "${winners[0]}")"
expect '"status": ?"shipped"' "the winner's order shipped"
capture projection query sales order "id=$(order_id "${losers[0]}")"
expect '"status": ?"cancelled"' "the refused order is cancelled"

step "The best-selling products and the totals over every shipped order (this server's, all runs)"
rf projection query sales top-products limit=3
rf projection query sales totals

printf '\nThe shop story ran to the end.\n'

//! A shop order's fulfilment, as a process: reserve the stock of every line
//! of a placed `order` on its products' `inventory` aggregates, wait for the
//! payment, then confirm the order; or give the stock back and cancel it.
//!
//! Neither aggregate can see the other (each decides from its own stream),
//! so this process runs the steps between them, one instance per order (the
//! instance id is the order's id):
//!
//! 1. `Placed`: a `Reserve {order_id, quantity}` goes to `inventory/{product}`
//!    for every line (key `reserve/{line}`), and the instance asks to be woken
//!    when the time to pay is up (key `payment`): the order's
//!    `pay_within_ms` after it was taken in, or
//!    [`DEFAULT_PAY_WITHIN_MS`].
//! 2. Every line reserved and the order `Paid` (in either order): `Confirm`
//!    (key `confirm`). Accepted: the fulfilment is completed.
//! 3. A reservation refused (`out-of-stock`, or anything else): every line
//!    already reserved is released (`Release`, key `release/{line}`), so is
//!    every line whose reservation still goes through later, and the order is
//!    cancelled (`Cancel`, key `cancel`, reason `{code}: {product}`). Failed.
//! 4. Still unpaid when the time to pay is up: the order is cancelled
//!    (reason [`PAYMENT_OVERDUE`]) with `unless_paid`, and only once that
//!    cancellation is accepted is the stock released. The payment and the
//!    cancellation race at the order, which settles it: a payment that got
//!    there first has the cancellation refused (`already-paid`), and the
//!    fulfilment carries on as if the deadline had not passed (step 2). Had
//!    the stock been released with the cancellation, that paid order would
//!    have lost it. A payment that comes second is refused by the order
//!    (`already-cancelled`), so the customer is never charged for a
//!    cancelled order.
//! 5. The order cancelled by someone else (its `Cancelled` event) before it
//!    is confirmed: its stock is released, as in step 3. Failed.
//!
//! Outcomes of commands in flight arrive whenever they arrive: a reservation
//! accepted after the fulfilment gave up is released at once, a `Confirm`
//! or `Cancel` refused because the order is already confirmed or cancelled
//! counts as done. A compensation that is refused otherwise (the order
//! cannot be cancelled because it shipped, a `Release` not understood) ends
//! the fulfilment as [`Phase::Stuck`]: its state says what is left for a
//! person to settle.
//!
//! Once the order is confirmed the fulfilment is over: shipping it, or
//! cancelling a confirmed order and releasing its stock, is the shop's
//! after-sale business (see the `order` crate), not this process's. A paid
//! order the process cancels (its stock ran out after the customer paid) is
//! owed a refund: both the order and the fulfilment keep `paid` set.
//!
//! The process assumes it is the one reserving the orders' stock. A
//! reservation someone else made for the same order id is found as
//! `already-reserved`: its quantity is not the line's, so the line counts as
//! refused (the order is cancelled), and that reservation is left to whoever
//! made it. Taking it as the line's would confirm an order whose stock is
//! not all held.

use inventory::Command as StockCommand;
use order::{Command as OrderCommand, DEFAULT_PAY_WITHIN_MS, Event as OrderEvent};
use refold_sdk::{
    Accepted, Envelope, Process, ProcessCommand, ProcessContext, ProcessInput, ProcessStatus,
    Reaction, Rejected, Selector,
};
use serde::{Deserialize, Serialize};

/// The aggregate type of the orders it fulfils.
pub const ORDER: &str = "order";
/// The aggregate type of the products' stock (one aggregate per product id).
pub const INVENTORY: &str = "inventory";

/// Command keys: what each command the process sends is for. A line's keys
/// are `reserve/{line}` and `release/{line}` ([`reserve_key`],
/// [`release_key`]), `{line}` its index in the state's `lines`.
pub const RESERVE: &str = "reserve";
pub const RELEASE: &str = "release";
pub const CONFIRM: &str = "confirm";
pub const CANCEL: &str = "cancel";

/// The wake-up key of the time to pay.
pub const PAYMENT: &str = "payment";

/// The cancellation reason (and the failure) of an order not paid in time.
pub const PAYMENT_OVERDUE: &str = "payment-overdue";
/// The failure of an order cancelled by someone else, before `: {reason}`.
pub const ORDER_CANCELLED: &str = "order-cancelled";

/// The key of line `line`'s `Reserve`.
pub fn reserve_key(line: usize) -> String {
    format!("{RESERVE}/{line}")
}

/// The key of line `line`'s `Release`.
pub fn release_key(line: usize) -> String {
    format!("{RELEASE}/{line}")
}

/// One product the order wants, and how many units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    pub product: String,
    pub quantity: i64,
}

/// A fulfilment's own events, kept in its instance stream. `line` is an
/// index into the state's `lines`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The order was placed: a reservation is on its way for each line, and
    /// the payment is awaited until `pay_by_ms` (Unix milliseconds).
    Started {
        order_id: String,
        lines: Vec<Wanted>,
        /// The order's total, in cents: what the customer pays.
        total: i64,
        pay_by_ms: u64,
    },
    /// The line's stock is held for the order.
    LineReserved {
        line: usize,
    },
    /// The inventory refused the line's reservation (`code`: its rejection
    /// code, or `malformed`).
    LineRefused {
        line: usize,
        code: String,
    },
    /// The order was paid (its `Paid` event).
    PaymentReceived {
        amount: i64,
    },
    /// Every line is reserved and the order paid: `Confirm` is on its way.
    Confirming,
    /// The order is confirmed: the fulfilment is completed.
    OrderConfirmed,
    /// The fulfilment gives up on the order: `Cancel` is on its way.
    /// `unless_paid`: only if the order is still unpaid (the time to pay is up).
    Cancelling {
        reason: String,
        unless_paid: bool,
    },
    /// The order refused the overdue cancellation: it had been paid first.
    /// The fulfilment carries on.
    PaidInTime,
    /// The order is cancelled: the process's `Cancel` was accepted (no
    /// `reason`), or someone else cancelled it (`reason` when known).
    OrderCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `Release` is on its way for these lines.
    Releasing {
        lines: Vec<usize>,
    },
    LineReleased {
        line: usize,
    },
    /// The inventory held nothing to release (`unknown-reservation`):
    /// someone shipped or released the line's stock already.
    LineNotHeld {
        line: usize,
    },
    /// The inventory refused the release otherwise: the stock may still be
    /// held, and a person has to look.
    ReleaseRefused {
        line: usize,
        code: String,
    },
    /// The order refused a `Confirm` or `Cancel` (`command`) in a way that
    /// takes it out of the process's hands: a person has to settle it.
    OrderRefused {
        command: String,
        code: String,
    },
}

/// Where a fulfilment is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No order yet.
    #[default]
    New,
    /// Reservations are in flight (the order may be paid already).
    Reserving,
    /// Every line is reserved; the payment is awaited.
    AwaitingPayment,
    /// `Confirm` is on its way.
    Confirming,
    Completed,
    /// Giving up: the order's cancellation, or releases, or reservations
    /// still to be released, are in flight.
    Cancelling,
    /// The order is cancelled and none of its stock is held.
    Failed,
    /// A compensation was refused: the order or some stock is left as it is
    /// until a person settles it.
    Stuck,
}

/// Where one line's stock is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stock {
    /// `Reserve` is on its way.
    #[default]
    Reserving,
    Reserved,
    /// The reservation was refused; nothing is held.
    Refused,
    /// `Release` is on its way.
    Releasing,
    Released,
    /// Nothing was held any more when it was released.
    NotHeld,
    /// The release was refused: the stock may still be held.
    ReleaseRefused,
}

/// What the process last did to, or learned of, the order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStep {
    /// Placed; nothing asked of it.
    #[default]
    Open,
    Confirming,
    Confirmed,
    Cancelling,
    CancellingUnlessPaid,
    Cancelled,
    /// It refused a `Confirm` or `Cancel`; see `order_refusal`.
    Refused,
}

/// One product of the order and its reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product: String,
    pub quantity: i64,
    pub stock: Stock,
    /// The inventory's rejection code, once it refused the reservation or
    /// the release.
    pub code: Option<String>,
}

/// A fulfilment's state: the whole record, as readers see it. Amounts are
/// in cents, times in Unix milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfilment {
    pub phase: Phase,
    pub order_id: String,
    /// One per product of the order, in the order's order.
    pub lines: Vec<Line>,
    pub total: i64,
    pub paid: bool,
    /// When the order is cancelled if it is still unpaid.
    pub pay_by_ms: u64,
    pub order: OrderStep,
    /// Why it gave up: `{code}: {product}` of the first refused reservation,
    /// [`PAYMENT_OVERDUE`], or [`ORDER_CANCELLED`] (with `: {reason}`).
    pub failure: Option<String>,
    /// The order's refusal that made it stuck: `{command}: {code}`.
    pub order_refusal: Option<String>,
}

impl Fulfilment {
    fn line_mut(&mut self, line: usize) -> Option<&mut Line> {
        self.lines.get_mut(line)
    }

    fn any(&self, stock: Stock) -> bool {
        self.lines.iter().any(|l| l.stock == stock)
    }

    /// Where it stands, from what it knows; `apply` keeps `phase` to it.
    fn derive_phase(&self) -> Phase {
        if self.order_id.is_empty() {
            return Phase::New;
        }
        let in_flight = self.any(Stock::Reserving) || self.any(Stock::Releasing);
        match self.order {
            OrderStep::Confirmed => Phase::Completed,
            OrderStep::Confirming => Phase::Confirming,
            OrderStep::Cancelling | OrderStep::CancellingUnlessPaid => Phase::Cancelling,
            // A refused line or a paid order with every line reserved never
            // rests open: the same reaction cancels or confirms it.
            OrderStep::Open if self.any(Stock::Refused) => Phase::Cancelling,
            OrderStep::Open if self.any(Stock::Reserving) => Phase::Reserving,
            OrderStep::Open if self.paid => Phase::Confirming,
            OrderStep::Open => Phase::AwaitingPayment,
            // Reserved lines of a cancelled order are released in the same
            // reaction, so they too are only in flight.
            OrderStep::Cancelled if in_flight || self.any(Stock::Reserved) => Phase::Cancelling,
            OrderStep::Cancelled if self.any(Stock::ReleaseRefused) => Phase::Stuck,
            OrderStep::Cancelled => Phase::Failed,
            OrderStep::Refused if in_flight => Phase::Cancelling,
            OrderStep::Refused => Phase::Stuck,
        }
    }

    /// Decides on the order's `Placed`: reserve every line, await the payment.
    fn start(context: &ProcessContext, order_id: &str, placed: OrderEvent) -> Reaction<Event> {
        let OrderEvent::Placed {
            lines,
            total,
            pay_within_ms,
            ..
        } = placed
        else {
            // Only `Placed` starts a fulfilment: an order accepts no other
            // command before it, so its stream has no other event first.
            return Reaction::none();
        };
        // The inventory keeps one reservation per order and product, so two
        // lines of one product (which the order refuses anyway) are one
        // reservation of both quantities.
        let mut wanted: Vec<Wanted> = Vec::new();
        for line in lines {
            match wanted.iter_mut().find(|w| w.product == line.product) {
                Some(w) => w.quantity = w.quantity.saturating_add(line.quantity),
                None => wanted.push(Wanted {
                    product: line.product,
                    quantity: line.quantity,
                }),
            }
        }
        let pay_by_ms = context
            .now_ms
            .saturating_add(pay_within_ms.unwrap_or(DEFAULT_PAY_WITHIN_MS));
        let mut reaction = Reaction::none();
        for (line, w) in wanted.iter().enumerate() {
            let command = StockCommand::Reserve {
                order_id: order_id.to_string(),
                quantity: w.quantity,
            };
            reaction = reaction.send(ProcessCommand::new(
                reserve_key(line),
                INVENTORY,
                &w.product,
                &command,
            ));
        }
        reaction
            .emit(Event::Started {
                order_id: order_id.to_string(),
                lines: wanted,
                total,
                pay_by_ms,
            })
            .wake_at(pay_by_ms, PAYMENT)
    }
}

/// What a command key says the command was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Reserve(usize),
    Release(usize),
    Confirm,
    Cancel,
}

/// One reaction being decided: the events so far, folded into the state
/// they lead to, so each decision sees the ones before it.
struct Decision {
    state: Fulfilment,
    reaction: Reaction<Event>,
}

impl Decision {
    fn record(&mut self, event: Event) {
        self.state = std::mem::take(&mut self.state).apply(&event);
        self.reaction.events.push(event);
    }

    fn order_command(&self, key: &str, command: &OrderCommand) -> ProcessCommand {
        ProcessCommand::new(key, ORDER, &self.state.order_id, command)
    }

    fn cancel(&mut self, reason: String, unless_paid: bool) -> ProcessCommand {
        let command = self.order_command(
            CANCEL,
            &OrderCommand::Cancel {
                reason: reason.clone(),
                unless_paid,
            },
        );
        self.record(Event::Cancelling {
            reason,
            unless_paid,
        });
        command
    }

    /// What the state now calls for. Idempotent: a state at rest calls for
    /// nothing, so it runs after every input.
    fn reconcile(&mut self) {
        let mut cancel = None;
        if self.state.order == OrderStep::Open {
            let refused = self.state.lines.iter().find(|l| l.stock == Stock::Refused);
            if let Some(line) = refused {
                let code = line.code.as_deref().unwrap_or("refused");
                let reason = format!("{code}: {}", line.product);
                // Cancelled even if paid: there is nothing to sell; the
                // customer is owed a refund.
                cancel = Some(self.cancel(reason, false));
            } else if self.state.paid && self.state.lines.iter().all(|l| l.stock == Stock::Reserved)
            {
                let command = self.order_command(CONFIRM, &OrderCommand::Confirm);
                self.record(Event::Confirming);
                self.reaction.commands.push(command);
            }
        }
        // Stock is given back once the order is sure to be cancelled: not
        // while an overdue cancellation may still lose to a payment.
        if matches!(
            self.state.order,
            OrderStep::Cancelling | OrderStep::Cancelled
        ) {
            let reserved: Vec<usize> = (0..self.state.lines.len())
                .filter(|&i| self.state.lines[i].stock == Stock::Reserved)
                .collect();
            if !reserved.is_empty() {
                for &line in &reserved {
                    let l = &self.state.lines[line];
                    let command = StockCommand::Release {
                        order_id: self.state.order_id.clone(),
                    };
                    self.reaction.commands.push(ProcessCommand::new(
                        release_key(line),
                        INVENTORY,
                        &l.product,
                        &command,
                    ));
                }
                self.record(Event::Releasing { lines: reserved });
            }
        }
        // After the releases, as a client would: give the stock back, then
        // tell the customer.
        self.reaction.commands.extend(cancel);
    }
}

impl Fulfilment {
    fn key(&self, key: &str) -> Result<Key, String> {
        let line = |index: &str| -> Result<usize, String> {
            index
                .parse::<usize>()
                .ok()
                .filter(|&i| i < self.lines.len())
                .ok_or_else(|| format!("the outcome of {key:?} names no line of this order"))
        };
        match key.split_once('/') {
            None if key == CONFIRM => Ok(Key::Confirm),
            None if key == CANCEL => Ok(Key::Cancel),
            Some((RESERVE, index)) => line(index).map(Key::Reserve),
            Some((RELEASE, index)) => line(index).map(Key::Release),
            _ => Err(format!(
                "the outcome of {key:?}, a command this process never sends"
            )),
        }
    }

    /// Line `line`, which must be waiting for this outcome.
    fn expect_line(&self, line: usize, stock: Stock, key: &str) -> Result<(), String> {
        let found = self.lines[line].stock;
        if found != stock {
            return Err(format!(
                "the outcome of {key:?} while the line is {found:?}"
            ));
        }
        Ok(())
    }

    fn accepted(&self, d: &mut Decision, accepted: &Accepted) -> Result<(), String> {
        let key = accepted.command.key.as_str();
        match (self.key(key)?, self.order) {
            (Key::Reserve(line), _) => {
                self.expect_line(line, Stock::Reserving, key)?;
                d.record(Event::LineReserved { line });
            }
            (Key::Release(line), _) => {
                self.expect_line(line, Stock::Releasing, key)?;
                d.record(Event::LineReleased { line });
            }
            (Key::Confirm, OrderStep::Confirming) => d.record(Event::OrderConfirmed),
            (Key::Cancel, OrderStep::Cancelling | OrderStep::CancellingUnlessPaid) => {
                d.record(Event::OrderCancelled { reason: None })
            }
            // Its `Cancelled` event came first: cancelled after it was
            // confirmed (the later cancellation stands, its stock is being
            // released), or by the process's own `Cancel`.
            (Key::Confirm | Key::Cancel, OrderStep::Cancelled) => {}
            (_, step) => {
                return Err(format!(
                    "the outcome of {key:?} while the order is {step:?}"
                ));
            }
        }
        Ok(())
    }

    fn rejected(&self, d: &mut Decision, rejected: &Rejected) -> Result<(), String> {
        let key = rejected.command.key.as_str();
        let code = rejected.code();
        let refused = |command: &str| Event::OrderRefused {
            command: command.into(),
            code: code.into(),
        };
        match (self.key(key)?, self.order) {
            (Key::Reserve(line), _) => {
                self.expect_line(line, Stock::Reserving, key)?;
                // `already-reserved` too: that reservation was not made
                // by this process, for this line's quantity.
                d.record(Event::LineRefused {
                    line,
                    code: code.into(),
                });
            }
            (Key::Release(line), _) => {
                self.expect_line(line, Stock::Releasing, key)?;
                if code == "unknown-reservation" {
                    d.record(Event::LineNotHeld { line });
                } else {
                    d.record(Event::ReleaseRefused {
                        line,
                        code: code.into(),
                    });
                }
            }
            (Key::Confirm, OrderStep::Confirming) => match code {
                // Confirmed (and maybe shipped) by someone else: done all the same.
                "already-confirmed" | "already-shipped" => d.record(Event::OrderConfirmed),
                "already-cancelled" => d.record(Event::OrderCancelled { reason: None }),
                _ => d.record(refused("Confirm")),
            },
            // The payment won the race with the overdue cancellation.
            (Key::Cancel, OrderStep::CancellingUnlessPaid) if code == "already-paid" => {
                d.record(Event::PaidInTime)
            }
            (Key::Cancel, OrderStep::Cancelling | OrderStep::CancellingUnlessPaid) => {
                if code == "already-cancelled" {
                    d.record(Event::OrderCancelled { reason: None });
                } else {
                    d.record(refused("Cancel"));
                }
            }
            // Its `Cancelled` event came first.
            (Key::Confirm | Key::Cancel, OrderStep::Cancelled) => {}
            (_, step) => {
                return Err(format!(
                    "the outcome of {key:?} while the order is {step:?}"
                ));
            }
        }
        Ok(())
    }
}

impl Process for Fulfilment {
    type LogEvent = OrderEvent;
    type Event = Event;

    /// The order events that start a fulfilment or change its course. Not
    /// `Confirmed`: the process confirms the order itself, and hears of it
    /// from its command's outcome. Not `Shipped`: shipping follows confirmation.
    fn subscription() -> Selector {
        Selector::aggregate_types([ORDER]).with_event_types(["Placed", "Paid", "Cancelled"])
    }

    /// One instance per order, named by the order's id.
    fn route(event: &Envelope<OrderEvent>) -> Option<String> {
        (event.aggregate_type == ORDER).then(|| event.aggregate_id.clone())
    }

    fn react(
        &self,
        context: &ProcessContext,
        input: ProcessInput<Envelope<OrderEvent>>,
    ) -> Result<Reaction<Event>, String> {
        use ProcessInput::{Accepted, Deadline, Event as Log, Rejected};
        if self.phase == Phase::New {
            return match input {
                Log(placed) => Ok(Self::start(context, &placed.aggregate_id, placed.event)),
                _ => Err("an outcome or a deadline before the order was placed".into()),
            };
        }
        let mut d = Decision {
            state: self.clone(),
            reaction: Reaction::none(),
        };
        match input {
            Log(log) => match log.event {
                OrderEvent::Paid { amount } if !self.paid => {
                    d.record(Event::PaymentReceived { amount })
                }
                // After confirmation a cancelled order is the shop's
                // after-sale business; before, the process heard of it
                // already if it is `Cancelled`.
                OrderEvent::Cancelled { reason }
                    if !matches!(self.order, OrderStep::Confirmed | OrderStep::Cancelled) =>
                {
                    d.record(Event::OrderCancelled {
                        reason: Some(reason),
                    })
                }
                // A payment already known, a cancellation already known, and
                // events the subscription does not admit.
                _ => {}
            },
            Deadline(deadline) if deadline.key == PAYMENT => {
                // Paid, or given up on already: the deadline has passed for nothing.
                if self.order == OrderStep::Open && !self.paid {
                    let command = d.cancel(PAYMENT_OVERDUE.into(), true);
                    d.reaction.commands.push(command);
                }
            }
            Deadline(deadline) => {
                return Err(format!(
                    "a deadline {:?} this process never asks for",
                    deadline.key
                ));
            }
            Accepted(accepted) => self.accepted(&mut d, &accepted)?,
            Rejected(rejected) => self.rejected(&mut d, &rejected)?,
        }
        d.reconcile();
        Ok(d.reaction)
    }

    fn apply(mut self, event: &Event) -> Self {
        let mut set_line = |line: usize, stock: Stock, code: Option<&String>| {
            if let Some(l) = self.line_mut(line) {
                l.stock = stock;
                if let Some(code) = code {
                    l.code = Some(code.clone());
                }
            }
        };
        match event {
            Event::Started {
                order_id,
                lines,
                total,
                pay_by_ms,
            } => {
                self.order_id.clone_from(order_id);
                self.lines = lines
                    .iter()
                    .map(|w| Line {
                        product: w.product.clone(),
                        quantity: w.quantity,
                        stock: Stock::Reserving,
                        code: None,
                    })
                    .collect();
                self.total = *total;
                self.pay_by_ms = *pay_by_ms;
                self.order = OrderStep::Open;
            }
            Event::LineReserved { line } => set_line(*line, Stock::Reserved, None),
            Event::LineRefused { line, code } => set_line(*line, Stock::Refused, Some(code)),
            Event::PaymentReceived { .. } => self.paid = true,
            Event::Confirming => self.order = OrderStep::Confirming,
            Event::OrderConfirmed => self.order = OrderStep::Confirmed,
            Event::Cancelling {
                reason,
                unless_paid,
            } => {
                self.order = if *unless_paid {
                    OrderStep::CancellingUnlessPaid
                } else {
                    OrderStep::Cancelling
                };
                self.failure = Some(reason.clone());
            }
            Event::PaidInTime => {
                self.paid = true;
                self.order = OrderStep::Open;
                self.failure = None;
            }
            Event::OrderCancelled { reason } => {
                self.order = OrderStep::Cancelled;
                // The process's own cancellation keeps its own reason.
                self.failure.get_or_insert_with(|| match reason {
                    Some(reason) if !reason.is_empty() => format!("{ORDER_CANCELLED}: {reason}"),
                    _ => ORDER_CANCELLED.to_string(),
                });
            }
            Event::Releasing { lines } => {
                for &line in lines {
                    set_line(line, Stock::Releasing, None);
                }
            }
            Event::LineReleased { line } => set_line(*line, Stock::Released, None),
            Event::LineNotHeld { line } => set_line(*line, Stock::NotHeld, None),
            Event::ReleaseRefused { line, code } => {
                set_line(*line, Stock::ReleaseRefused, Some(code))
            }
            Event::OrderRefused { command, code } => {
                self.order = OrderStep::Refused;
                self.order_refusal = Some(format!("{command}: {code}"));
            }
        }
        self.phase = self.derive_phase();
        self
    }

    fn status(&self) -> ProcessStatus {
        match self.phase {
            Phase::Completed => ProcessStatus::Completed,
            // Stuck is finished as far as the process goes; what is left is
            // named in its state for whoever settles it.
            Phase::Failed | Phase::Stuck => ProcessStatus::Failed,
            Phase::New
            | Phase::Reserving
            | Phase::AwaitingPayment
            | Phase::Confirming
            | Phase::Cancelling => ProcessStatus::Running,
        }
    }
}

#[cfg(feature = "component")]
refold_sdk::export_process!(Fulfilment);

#[cfg(test)]
mod tests {
    use super::*;
    use inventory::Event as StockEvent;
    use order::Line as OrderLine;
    use refold_sdk::Deadline;
    use refold_sdk::testing::ProcessTest;

    const START_MS: u64 = 1_700_000_000_000;

    fn order_line(product: &str, quantity: i64, unit_price: i64) -> OrderLine {
        OrderLine {
            product: product.into(),
            quantity,
            unit_price,
        }
    }

    /// Ada's order o-1: 3 apples at 50, a pear at 120.
    fn placed(pay_within_ms: Option<u64>) -> OrderEvent {
        OrderEvent::Placed {
            customer: "Ada".into(),
            lines: vec![order_line("apple", 3, 50), order_line("pear", 1, 120)],
            total: 270,
            pay_within_ms,
        }
    }

    fn reserve(product: &str, line: usize, quantity: i64) -> ProcessCommand {
        let command = StockCommand::Reserve {
            order_id: "o-1".into(),
            quantity,
        };
        ProcessCommand::new(reserve_key(line), INVENTORY, product, &command)
    }

    fn release(product: &str, line: usize) -> ProcessCommand {
        let command = StockCommand::Release {
            order_id: "o-1".into(),
        };
        ProcessCommand::new(release_key(line), INVENTORY, product, &command)
    }

    fn confirm() -> ProcessCommand {
        ProcessCommand::new(CONFIRM, ORDER, "o-1", &OrderCommand::Confirm)
    }

    fn cancel(reason: &str, unless_paid: bool) -> ProcessCommand {
        let command = OrderCommand::Cancel {
            reason: reason.into(),
            unless_paid,
        };
        ProcessCommand::new(CANCEL, ORDER, "o-1", &command)
    }

    fn reserved(quantity: i64) -> Vec<StockEvent> {
        vec![StockEvent::Reserved {
            order_id: "o-1".into(),
            quantity,
            available: 10,
        }]
    }

    fn released(quantity: i64) -> Vec<StockEvent> {
        vec![StockEvent::Released {
            order_id: "o-1".into(),
            quantity,
        }]
    }

    fn order_cancelled(reason: &str) -> Vec<OrderEvent> {
        vec![OrderEvent::Cancelled {
            reason: reason.into(),
        }]
    }

    fn stock(f: &Fulfilment) -> Vec<Stock> {
        f.lines.iter().map(|l| l.stock).collect()
    }

    /// o-1 placed: both reservations sent, the payment awaited for 15 minutes.
    fn started() -> ProcessTest<Fulfilment> {
        ProcessTest::<Fulfilment>::new()
            .named("order-fulfilment")
            .when_event(ORDER, "o-1", placed(None))
            .then_routed_to("o-1")
            .then_events(vec![Event::Started {
                order_id: "o-1".into(),
                lines: vec![
                    Wanted {
                        product: "apple".into(),
                        quantity: 3,
                    },
                    Wanted {
                        product: "pear".into(),
                        quantity: 1,
                    },
                ],
                total: 270,
                pay_by_ms: START_MS + DEFAULT_PAY_WITHIN_MS,
            }])
            .then_commands(vec![reserve("apple", 0, 3), reserve("pear", 1, 1)])
            .then_wake_ups(vec![Deadline::new(
                START_MS + DEFAULT_PAY_WITHIN_MS,
                PAYMENT,
            )])
            .then_pending(&["reserve/0", "reserve/1"])
            .then_status(ProcessStatus::Running)
            .then_state(|f| assert_eq!(f.phase, Phase::Reserving))
    }

    /// o-1 with both lines reserved, awaiting its payment.
    fn reserved_both() -> ProcessTest<Fulfilment> {
        started()
            .when_accepted("reserve/0", reserved(3))
            .then_events(vec![Event::LineReserved { line: 0 }])
            .then_no_commands()
            .when_accepted("reserve/1", reserved(1))
            .then_events(vec![Event::LineReserved { line: 1 }])
            .then_no_commands()
            .then_state(|f| assert_eq!(f.phase, Phase::AwaitingPayment))
    }

    fn pay(test: ProcessTest<Fulfilment>) -> ProcessTest<Fulfilment> {
        test.when_event(ORDER, "o-1", OrderEvent::Paid { amount: 270 })
            .then_routed_to("o-1")
    }

    #[test]
    fn a_paid_order_with_its_stock_reserved_is_confirmed() {
        pay(reserved_both())
            .then_events(vec![
                Event::PaymentReceived { amount: 270 },
                Event::Confirming,
            ])
            .then_commands(vec![confirm()])
            .then_state(|f| assert_eq!(f.phase, Phase::Confirming))
            .when_accepted(CONFIRM, vec![OrderEvent::Confirmed])
            .then_events(vec![Event::OrderConfirmed])
            .then_no_commands()
            .then_pending(&[])
            .then_status(ProcessStatus::Completed)
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Completed);
                assert_eq!(stock(f), [Stock::Reserved, Stock::Reserved]);
                assert!(f.paid);
                assert_eq!(f.failure, None);
            });
    }

    #[test]
    fn an_order_paid_before_its_stock_is_reserved_is_confirmed_once_it_is() {
        let test = pay(started().when_accepted("reserve/0", reserved(3)))
            .then_events(vec![Event::PaymentReceived { amount: 270 }])
            .then_no_commands()
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Reserving);
                assert!(f.paid);
            })
            .when_accepted("reserve/1", reserved(1))
            .then_events(vec![Event::LineReserved { line: 1 }, Event::Confirming])
            .then_commands(vec![confirm()])
            .when_accepted(CONFIRM, vec![OrderEvent::Confirmed])
            .then_status(ProcessStatus::Completed);
        // The payment's deadline fires after all and changes nothing.
        test.advance_by(DEFAULT_PAY_WITHIN_MS)
            .then_routed_to("o-1")
            .then_events(vec![])
            .then_no_commands()
            .then_status(ProcessStatus::Completed);
    }

    #[test]
    fn a_refused_reservation_releases_the_reserved_lines_and_cancels_the_order() {
        started()
            .when_accepted("reserve/0", reserved(3))
            .when_rejected("reserve/1", "out-of-stock")
            .then_events(vec![
                Event::LineRefused {
                    line: 1,
                    code: "out-of-stock".into(),
                },
                Event::Cancelling {
                    reason: "out-of-stock: pear".into(),
                    unless_paid: false,
                },
                Event::Releasing { lines: vec![0] },
            ])
            .then_commands(vec![
                release("apple", 0),
                cancel("out-of-stock: pear", false),
            ])
            .then_status(ProcessStatus::Running)
            .then_state(|f| assert_eq!(f.phase, Phase::Cancelling))
            .when_accepted("release/0", released(3))
            .then_events(vec![Event::LineReleased { line: 0 }])
            .then_status(ProcessStatus::Running)
            .when_accepted(CANCEL, order_cancelled("out-of-stock: pear"))
            .then_events(vec![Event::OrderCancelled { reason: None }])
            .then_no_commands()
            .then_pending(&[])
            .then_status(ProcessStatus::Failed)
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Failed);
                assert_eq!(stock(f), [Stock::Released, Stock::Refused]);
                assert_eq!(f.lines[1].code.as_deref(), Some("out-of-stock"));
                assert_eq!(f.failure.as_deref(), Some("out-of-stock: pear"));
            })
            // The order's own Cancelled event, and the deadline, change nothing.
            .when_event(
                ORDER,
                "o-1",
                order_cancelled("out-of-stock: pear").remove(0),
            )
            .then_routed_to("o-1")
            .then_events(vec![])
            .then_no_commands()
            .advance_by(DEFAULT_PAY_WITHIN_MS)
            .then_events(vec![])
            .then_no_commands()
            .then_status(ProcessStatus::Failed);
    }

    #[test]
    fn a_reservation_accepted_after_another_was_refused_is_released_too() {
        started()
            .when_rejected("reserve/0", "out-of-stock")
            .then_commands(vec![cancel("out-of-stock: apple", false)])
            .then_pending(&["reserve/1", "cancel"])
            .when_accepted(CANCEL, order_cancelled("out-of-stock: apple"))
            .then_events(vec![Event::OrderCancelled { reason: None }])
            // The pear's reservation is still in flight.
            .then_status(ProcessStatus::Running)
            .when_accepted("reserve/1", reserved(1))
            .then_events(vec![
                Event::LineReserved { line: 1 },
                Event::Releasing { lines: vec![1] },
            ])
            .then_commands(vec![release("pear", 1)])
            .then_status(ProcessStatus::Running)
            .when_accepted("release/1", released(1))
            .then_status(ProcessStatus::Failed)
            .then_state(|f| assert_eq!(stock(f), [Stock::Refused, Stock::Released]));
    }

    #[test]
    fn a_second_refusal_does_not_cancel_twice() {
        started()
            .when_rejected("reserve/0", "out-of-stock")
            .when_rejected("reserve/1", "malformed")
            .then_events(vec![Event::LineRefused {
                line: 1,
                code: "malformed".into(),
            }])
            .then_no_commands()
            .when_rejected(CANCEL, "already-cancelled")
            .then_events(vec![Event::OrderCancelled { reason: None }])
            .then_status(ProcessStatus::Failed)
            .then_state(|f| assert_eq!(f.failure.as_deref(), Some("out-of-stock: apple")));
    }

    #[test]
    fn an_unpaid_order_is_cancelled_when_its_time_is_up_then_its_stock_released() {
        let deadline = START_MS + DEFAULT_PAY_WITHIN_MS;
        reserved_both()
            .advance_to(deadline - 1)
            .then_not_routed()
            .advance_to(deadline)
            .then_routed_to("o-1")
            .then_events(vec![Event::Cancelling {
                reason: PAYMENT_OVERDUE.into(),
                unless_paid: true,
            }])
            // No release yet: a payment may have got to the order first.
            .then_commands(vec![ProcessCommand {
                key: CANCEL.into(),
                aggregate_type: ORDER.into(),
                aggregate_id: "o-1".into(),
                command: r#"{"type":"Cancel","reason":"payment-overdue","unless_paid":true}"#
                    .into(),
            }])
            .then_state(|f| assert_eq!(f.phase, Phase::Cancelling))
            .when_accepted(CANCEL, order_cancelled(PAYMENT_OVERDUE))
            .then_events(vec![
                Event::OrderCancelled { reason: None },
                Event::Releasing { lines: vec![0, 1] },
            ])
            .then_commands(vec![release("apple", 0), release("pear", 1)])
            .when_accepted("release/1", released(1))
            .when_accepted("release/0", released(3))
            .then_status(ProcessStatus::Failed)
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Failed);
                assert_eq!(stock(f), [Stock::Released, Stock::Released]);
                assert_eq!(f.failure.as_deref(), Some(PAYMENT_OVERDUE));
                assert!(!f.paid);
            });
    }

    #[test]
    fn the_time_to_pay_is_the_orders() {
        let test = ProcessTest::<Fulfilment>::new();
        let deadline = test.now_ms() + 60_000;
        test.when_event(ORDER, "o-1", placed(Some(60_000)))
            .then_wake_ups(vec![Deadline::new(deadline, PAYMENT)])
            .then_state(|f| assert_eq!(f.pay_by_ms, deadline))
            .advance_to(deadline)
            // Cancelled while the reservations are still in flight.
            .then_commands(vec![cancel(PAYMENT_OVERDUE, true)])
            .when_accepted(CANCEL, order_cancelled(PAYMENT_OVERDUE))
            .then_no_commands()
            .when_accepted("reserve/0", reserved(3))
            .then_commands(vec![release("apple", 0)])
            .when_rejected("reserve/1", "out-of-stock")
            .then_no_commands()
            .when_accepted("release/0", released(3))
            .then_status(ProcessStatus::Failed)
            .then_state(|f| assert_eq!(f.failure.as_deref(), Some(PAYMENT_OVERDUE)));
    }

    #[test]
    fn a_payment_that_beat_the_overdue_cancellation_confirms_the_order() {
        let overdue = reserved_both()
            .advance_by(DEFAULT_PAY_WITHIN_MS)
            .then_commands(vec![cancel(PAYMENT_OVERDUE, true)]);
        // The payment got to the order first: its Paid event may reach the
        // process before the cancellation's refusal, or after it.
        pay(overdue)
            .then_events(vec![Event::PaymentReceived { amount: 270 }])
            .then_no_commands()
            .when_rejected(CANCEL, "already-paid")
            .then_events(vec![Event::PaidInTime, Event::Confirming])
            .then_commands(vec![confirm()])
            .when_accepted(CONFIRM, vec![OrderEvent::Confirmed])
            .then_status(ProcessStatus::Completed)
            .then_state(|f| assert_eq!(f.failure, None));
        let refused_first = reserved_both()
            .advance_by(DEFAULT_PAY_WITHIN_MS)
            .when_rejected(CANCEL, "already-paid")
            .then_events(vec![Event::PaidInTime, Event::Confirming])
            .then_commands(vec![confirm()]);
        pay(refused_first)
            .then_events(vec![])
            .then_no_commands()
            .then_pending(&[CONFIRM]);
    }

    #[test]
    fn a_payment_in_time_does_not_save_an_order_whose_stock_ran_out() {
        started()
            .when_accepted("reserve/0", reserved(3))
            .advance_by(DEFAULT_PAY_WITHIN_MS)
            .then_commands(vec![cancel(PAYMENT_OVERDUE, true)])
            .when_rejected("reserve/1", "out-of-stock")
            // Nothing yet: the overdue cancellation is still in flight.
            .then_no_commands()
            .when_rejected(CANCEL, "already-paid")
            .then_events(vec![
                Event::PaidInTime,
                Event::Cancelling {
                    reason: "out-of-stock: pear".into(),
                    unless_paid: false,
                },
                Event::Releasing { lines: vec![0] },
            ])
            .then_commands(vec![
                release("apple", 0),
                cancel("out-of-stock: pear", false),
            ])
            .when_accepted(CANCEL, order_cancelled("out-of-stock: pear"))
            .when_accepted("release/0", released(3))
            .then_status(ProcessStatus::Failed)
            // Paid and cancelled: a refund is owed.
            .then_state(|f| {
                assert!(f.paid);
                assert_eq!(f.failure.as_deref(), Some("out-of-stock: pear"));
            });
    }

    #[test]
    fn an_order_cancelled_by_someone_else_gets_its_stock_released() {
        started()
            .when_accepted("reserve/0", reserved(3))
            .when_event(ORDER, "o-1", order_cancelled("changed my mind").remove(0))
            .then_routed_to("o-1")
            .then_events(vec![
                Event::OrderCancelled {
                    reason: Some("changed my mind".into()),
                },
                Event::Releasing { lines: vec![0] },
            ])
            .then_commands(vec![release("apple", 0)])
            .when_accepted("reserve/1", reserved(1))
            .then_commands(vec![release("pear", 1)])
            .when_accepted("release/0", released(3))
            // A release of stock that is no longer held is no harm.
            .when_rejected("release/1", "unknown-reservation")
            .then_events(vec![Event::LineNotHeld { line: 1 }])
            .then_status(ProcessStatus::Failed)
            .then_state(|f| {
                assert_eq!(stock(f), [Stock::Released, Stock::NotHeld]);
                assert_eq!(
                    f.failure.as_deref(),
                    Some("order-cancelled: changed my mind")
                );
            });
    }

    #[test]
    fn an_order_cancelled_while_it_is_being_confirmed_gets_its_stock_released() {
        // The customer's cancellation got to the order before the Confirm.
        pay(reserved_both())
            .when_rejected(CONFIRM, "already-cancelled")
            .then_events(vec![
                Event::OrderCancelled { reason: None },
                Event::Releasing { lines: vec![0, 1] },
            ])
            .then_commands(vec![release("apple", 0), release("pear", 1)])
            .when_event(ORDER, "o-1", order_cancelled("too slow").remove(0))
            .then_events(vec![])
            .then_state(|f| assert_eq!(f.failure.as_deref(), Some(ORDER_CANCELLED)));
        // Confirmed, then cancelled, and the Cancelled event came first.
        pay(reserved_both())
            .when_event(ORDER, "o-1", order_cancelled("changed my mind").remove(0))
            .then_commands(vec![release("apple", 0), release("pear", 1)])
            .when_accepted(CONFIRM, vec![OrderEvent::Confirmed])
            .then_events(vec![])
            .then_no_commands()
            .when_accepted("release/0", released(3))
            .when_accepted("release/1", released(1))
            .then_status(ProcessStatus::Failed);
    }

    #[test]
    fn after_confirmation_a_cancellation_is_the_shops_business() {
        pay(reserved_both())
            .when_accepted(CONFIRM, vec![OrderEvent::Confirmed])
            .when_event(ORDER, "o-1", order_cancelled("changed my mind").remove(0))
            .then_routed_to("o-1")
            .then_events(vec![])
            .then_no_commands()
            .then_status(ProcessStatus::Completed);
    }

    #[test]
    fn a_confirm_refused_as_done_already_completes() {
        for code in ["already-confirmed", "already-shipped"] {
            pay(reserved_both())
                .when_rejected(CONFIRM, code)
                .then_events(vec![Event::OrderConfirmed])
                .then_status(ProcessStatus::Completed);
        }
    }

    #[test]
    fn refused_compensations_leave_the_fulfilment_stuck_for_a_person() {
        // The order cannot be cancelled: it shipped meanwhile.
        started()
            .when_accepted("reserve/0", reserved(3))
            .when_rejected("reserve/1", "out-of-stock")
            .when_rejected(CANCEL, "already-shipped")
            .then_events(vec![Event::OrderRefused {
                command: "Cancel".into(),
                code: "already-shipped".into(),
            }])
            .then_status(ProcessStatus::Running)
            .when_rejected("release/0", "unknown-reservation")
            .then_status(ProcessStatus::Failed)
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Stuck);
                assert_eq!(f.order_refusal.as_deref(), Some("Cancel: already-shipped"));
            });
        // A release the inventory does not understand: the stock may be held.
        started()
            .when_rejected("reserve/0", "out-of-stock")
            .when_accepted("reserve/1", reserved(1))
            .when_accepted(CANCEL, order_cancelled("out-of-stock: apple"))
            .when_malformed("release/1", "no such module")
            .then_events(vec![Event::ReleaseRefused {
                line: 1,
                code: "malformed".into(),
            }])
            .then_status(ProcessStatus::Failed)
            .then_state(|f| {
                assert_eq!(f.phase, Phase::Stuck);
                assert_eq!(f.lines[1].stock, Stock::ReleaseRefused);
            });
        // A Confirm the order does not understand: reserved and paid, not confirmed.
        pay(reserved_both())
            .when_malformed(CONFIRM, "no such module")
            .then_events(vec![Event::OrderRefused {
                command: "Confirm".into(),
                code: "malformed".into(),
            }])
            .then_status(ProcessStatus::Failed)
            .then_state(|f| assert_eq!(f.phase, Phase::Stuck));
        // The overdue cancellation refused for another reason: nothing released.
        reserved_both()
            .advance_by(DEFAULT_PAY_WITHIN_MS)
            .when_malformed(CANCEL, "no such module")
            .then_no_commands()
            .then_status(ProcessStatus::Failed)
            .then_state(|f| assert_eq!(stock(f), [Stock::Reserved, Stock::Reserved]));
    }

    #[test]
    fn a_reservation_made_by_someone_else_for_the_order_refuses_the_line() {
        started()
            .when_rejected("reserve/0", "already-reserved")
            .then_events(vec![
                Event::LineRefused {
                    line: 0,
                    code: "already-reserved".into(),
                },
                Event::Cancelling {
                    reason: "already-reserved: apple".into(),
                    unless_paid: false,
                },
            ])
            .then_status(ProcessStatus::Running);
    }

    #[test]
    fn lines_of_one_product_are_one_reservation() {
        let placed = OrderEvent::Placed {
            customer: "Ada".into(),
            lines: vec![
                order_line("apple", 3, 50),
                order_line("pear", 1, 120),
                order_line("apple", 2, 50),
            ],
            total: 370,
            pay_within_ms: None,
        };
        ProcessTest::<Fulfilment>::new()
            .when_event(ORDER, "o-1", placed)
            .then_commands(vec![reserve("apple", 0, 5), reserve("pear", 1, 1)])
            .then_state(|f| assert_eq!(f.lines.len(), 2));
    }

    #[test]
    fn only_order_events_that_matter_are_routed() {
        started()
            .when_event(ORDER, "o-1", OrderEvent::Confirmed)
            .then_not_routed()
            .when_event(ORDER, "o-1", OrderEvent::Shipped)
            .then_not_routed()
            .when_event(INVENTORY, "apple", reserved(3).remove(0))
            .then_not_routed()
            .when_raw_event("sales-desk", "d-1", "Paid", r#"{"amount":270}"#)
            .then_not_routed()
            // Another order is another fulfilment.
            .when_event(ORDER, "o-2", placed(None))
            .then_routed_to("o-2")
            .instance("o-1")
            .then_pending(&["reserve/0", "reserve/1"]);
        assert_eq!(
            Fulfilment::subscription(),
            Selector {
                event_types: vec!["Placed".into(), "Paid".into(), "Cancelled".into()],
                aggregate_types: vec![ORDER.into()],
            }
        );
    }

    #[test]
    fn the_state_renders_as_a_complete_record() {
        let test = started().when_accepted("reserve/0", reserved(3));
        test.then_state(|f| {
            let state = refold_sdk::codec::encode_process_state(f);
            let json = refold_sdk::codec::render_process::<Fulfilment>(&state).unwrap();
            assert_eq!(
                json,
                format!(
                    r#"{{"phase":"reserving","order_id":"o-1","lines":[{{"product":"apple","quantity":3,"stock":"reserved","code":null}},{{"product":"pear","quantity":1,"stock":"reserving","code":null}}],"total":270,"paid":false,"pay_by_ms":{},"order":"open","failure":null,"order_refusal":null}}"#,
                    START_MS + DEFAULT_PAY_WITHIN_MS
                )
            );
        });
    }

    #[test]
    fn inputs_the_process_cannot_have_asked_for_stop_the_instance() {
        let state = Fulfilment::default().apply(&Event::Started {
            order_id: "o-1".into(),
            lines: vec![],
            total: 0,
            pay_by_ms: 0,
        });
        let outcome = |key: &str| {
            ProcessInput::Rejected(refold_sdk::Rejected {
                command: ProcessCommand::new(key, ORDER, "o-1", &OrderCommand::Confirm),
                command_id: "c-1".into(),
                failure: refold_sdk::codec::CommandFailure::Malformed("?".into()),
            })
        };
        let context = ProcessContext::default();
        for key in ["reserve/0", "release/x", "refund", CONFIRM, CANCEL] {
            assert!(state.react(&context, outcome(key)).is_err(), "{key}");
        }
        assert!(
            Fulfilment::default()
                .react(&context, outcome(CONFIRM))
                .is_err()
        );
        let deadline = ProcessInput::Deadline(Deadline::new(0, "shipping"));
        assert!(state.react(&context, deadline).is_err());
    }

    #[test]
    fn no_event_type_is_reserved_for_the_runner() {
        let events = [
            Event::Confirming,
            Event::OrderConfirmed,
            Event::PaidInTime,
            Event::OrderCancelled { reason: None },
        ];
        for event in events {
            let parts = refold_sdk::codec::encode_event(&event).unwrap();
            assert!(!parts.event_type.starts_with("refold."));
        }
    }
}

//! Unit tests of the plan: the ledger's rules, without a database.

use super::*;
use crate::payments::CreditSource;
use crate::tasks::types::{EventInput, NewTask};
use shared::tasks::{TaskEventKind, TaskStatus};

const ACCOUNT: &str = "alice";

fn actor() -> Actor {
    Actor {
        id: "tester".into(),
        roles: Vec::new(),
        request_id: Some("req-1".into()),
        client_ip: None,
    }
}

fn request(operation: Operation) -> LedgerRequest {
    LedgerRequest {
        account_id: ACCOUNT.into(),
        operation,
        actor: actor(),
        completion: None,
        task: None,
    }
}

fn with_task(operation: Operation, task: TaskWrite) -> LedgerRequest {
    LedgerRequest {
        task: Some(task),
        ..request(operation)
    }
}

fn charge(amount: i64) -> Operation {
    Operation::Charge {
        amount,
        reason: "test".into(),
        task_id: None,
        metadata: None,
    }
}

fn adjust(amount: i64) -> Operation {
    Operation::Adjust {
        amount,
        reason: "test".into(),
    }
}

fn refund(charge_entry_id: i64, amount: i64) -> Operation {
    Operation::Refund {
        charge_entry_id,
        amount,
        reason: "test".into(),
    }
}

fn recharge(order_id: Uuid, amount: i64) -> Operation {
    Operation::Recharge {
        amount,
        payment: PaymentCredit {
            order_id,
            transaction_id: "wx-1".into(),
            success_time: None,
            payer_openid: None,
            notification_id: None,
            source: CreditSource::Notification,
        },
    }
}

fn hold(hold_id: Uuid, amount: i64) -> Operation {
    Operation::Hold {
        hold_id,
        task_id: None,
        amount,
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn new_task(task_id: Uuid) -> NewTask {
    NewTask {
        id: task_id,
        owner_id: "tester".into(),
        account_id: ACCOUNT.into(),
        task_type: "render".into(),
        units: 10,
        params: serde_json::json!({}),
        estimated_credits: 100,
    }
}

fn event(task_id: Uuid, state: TaskStatus) -> TaskWrite {
    TaskWrite::Event {
        task_id,
        input: EventInput {
            kind: TaskEventKind::State,
            state: Some(state),
            progress: None,
            actual_units: None,
            message: None,
            data: None,
        },
        node_id: "node-1".into(),
    }
}

/// Facts for an account with these balances, every claim held, ids 1, 2, 3, ...
fn account(available: i64, held: i64, debt: i64) -> Facts {
    Facts {
        account: Some(Account {
            balances: Balances {
                available,
                held,
                debt,
            },
            now: DateTime::<Utc>::UNIX_EPOCH,
            ids: (1..=64).collect(),
        }),
        ..Facts::default()
    }
}

/// Plans `batch`; claims are held unless `facts` says otherwise.
fn run<'a>(mut facts: Facts, batch: &'a [LedgerRequest]) -> Planned<'a> {
    if facts.claims_held.is_empty() {
        facts.claims_held = vec![true; batch.len()];
    }
    plan(ACCOUNT, batch, facts).expect("no fault")
}

fn applied(verdict: &Verdict) -> &Applied {
    match verdict {
        Verdict::Decided(Ok(applied)) => applied,
        other => panic!("expected an applied request, got {other:?}"),
    }
}

fn refused(verdict: &Verdict) -> &DomainError {
    match verdict {
        Verdict::Decided(Err(error)) => error,
        other => panic!("expected a refused request, got {other:?}"),
    }
}

fn balance(applied: &Applied) -> (i64, i64, i64) {
    (
        applied.balance.available,
        applied.balance.held,
        applied.balance.debt,
    )
}

#[test]
fn a_charge_takes_from_available_and_plans_one_row_with_the_balances_after() {
    let batch = [request(charge(300))];

    let planned = run(account(1_000, 0, 0), &batch);

    let applied = applied(&planned.verdicts[0]);
    assert_eq!(balance(applied), (700, 0, 0));
    assert_eq!(applied.entry.amount, -300);
    assert_eq!(applied.entry.kind, EntryKind::Charge);
    assert_eq!(applied.entry.entry_id, 1);
    assert_eq!(planned.rows.len(), 1);
    assert_eq!(planned.rows[0].entry, applied.entry);
    assert_eq!(planned.rows[0].actor_id, "tester");
    assert_eq!(planned.rows[0].request_id.as_deref(), Some("req-1"));
    assert!(planned.writes.is_empty());
}

#[test]
fn a_charge_beyond_the_available_balance_is_refused_and_plans_nothing() {
    let batch = [request(charge(1_001))];

    let planned = run(account(1_000, 500, 0), &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::InsufficientCredits {
            available: 1_000,
            requested: 1_001
        }
    ));
    assert!(planned.rows.is_empty());
}

#[test]
fn in_one_batch_the_request_without_funds_fails_alone_and_the_others_apply_in_order() {
    let batch = [
        request(charge(600)),
        request(charge(600)),
        request(charge(300)),
    ];

    let planned = run(account(1_000, 0, 0), &batch);

    assert_eq!(balance(applied(&planned.verdicts[0])), (400, 0, 0));
    assert!(matches!(
        refused(&planned.verdicts[1]),
        DomainError::InsufficientCredits {
            available: 400,
            requested: 600
        }
    ));
    let last = applied(&planned.verdicts[2]);
    assert_eq!(balance(last), (100, 0, 0));
    // The refused request used no id: the next row takes the next one.
    assert_eq!(last.entry.entry_id, 2);
    assert_eq!(planned.rows.len(), 2);
}

#[test]
fn charges_and_credits_of_zero_or_the_wrong_sign_are_refused() {
    let batch = [
        request(charge(0)),
        request(charge(-5)),
        request(adjust(0)),
        request(refund(7, 0)),
        request(recharge(id(1), 0)),
        request(hold(id(2), 0)),
        request(Operation::Capture {
            hold_id: id(3),
            actual: -1,
        }),
    ];

    let planned = run(account(1_000, 0, 0), &batch);

    for verdict in &planned.verdicts {
        assert!(matches!(refused(verdict), DomainError::Validation(_)));
    }
    assert!(planned.rows.is_empty());
    assert!(planned.writes.is_empty());
}

#[test]
fn amounts_beyond_the_largest_amount_are_refused_whatever_their_sign() {
    let batch = [
        request(charge(MAX_AMOUNT + 1)),
        request(adjust(i64::MIN)),
        request(adjust(i64::MAX)),
        request(Operation::Capture {
            hold_id: id(1),
            actual: i64::MAX,
        }),
        request(charge(MAX_AMOUNT)),
    ];

    let planned = run(account(MAX_AMOUNT, 0, 0), &batch);

    for verdict in &planned.verdicts[..4] {
        let DomainError::Validation(message) = refused(verdict) else {
            panic!("expected a validation error");
        };
        assert!(message.contains("amounts are at most"), "{message}");
    }
    assert_eq!(balance(applied(&planned.verdicts[4])), (0, 0, 0));
}

#[test]
fn a_charge_for_a_task_must_name_a_task_of_the_account() {
    let (known, unknown) = (id(1), id(2));
    let for_task = |task_id| Operation::Charge {
        amount: 10,
        reason: "test".into(),
        task_id: Some(task_id),
        metadata: Some(serde_json::json!({"k": "v"})),
    };
    let batch = [request(for_task(unknown)), request(for_task(known))];
    let mut facts = account(100, 0, 0);
    facts.account_tasks.insert(known);

    let planned = run(facts, &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::NotFound { what: "task" }
    ));
    let applied = applied(&planned.verdicts[1]);
    assert_eq!(applied.entry.task_id, Some(known.to_string()));
    assert_eq!(planned.rows[0].task_id, Some(known));
    assert_eq!(
        planned.rows[0].metadata,
        Some(serde_json::json!({"k": "v"}))
    );
}

#[test]
fn a_task_created_earlier_in_the_batch_can_be_charged_for() {
    let task_id = id(9);
    let batch = [
        request(Operation::Charge {
            amount: 10,
            reason: "too early".into(),
            task_id: Some(task_id),
            metadata: None,
        }),
        with_task(hold(id(1), 100), TaskWrite::Create(new_task(task_id))),
        request(Operation::Charge {
            amount: 10,
            reason: "test".into(),
            task_id: Some(task_id),
            metadata: None,
        }),
    ];

    let planned = run(account(1_000, 0, 0), &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::NotFound { what: "task" }
    ));
    applied(&planned.verdicts[1]);
    assert_eq!(balance(applied(&planned.verdicts[2])), (890, 100, 0));
}

fn charge_fact(amount: i64, refunded: i64) -> Charge {
    Charge {
        account_id: ACCOUNT.into(),
        kind: "charge".into(),
        amount: -amount,
        reference: None,
        refunded,
    }
}

#[test]
fn refunds_of_a_charge_never_exceed_it_across_the_table_and_the_batch() {
    let batch = [
        request(refund(7, 50)),
        request(refund(7, 21)),
        request(refund(7, 20)),
        request(refund(7, 1)),
    ];
    let mut facts = account(0, 0, 0);
    facts.charges.insert(7, charge_fact(100, 30));

    let planned = run(facts, &batch);

    let first = applied(&planned.verdicts[0]);
    assert_eq!(first.entry.kind, EntryKind::Refund);
    assert_eq!(first.entry.related_entry_id, Some(7));
    assert_eq!(balance(first), (50, 0, 0));
    assert!(matches!(
        refused(&planned.verdicts[1]),
        DomainError::RefundExceedsCharge { remaining: 20 }
    ));
    assert_eq!(balance(applied(&planned.verdicts[2])), (70, 0, 0));
    assert!(matches!(
        refused(&planned.verdicts[3]),
        DomainError::RefundExceedsCharge { remaining: 0 }
    ));
}

#[test]
fn a_refund_must_name_a_charge_of_the_account() {
    let batch = [
        request(refund(1, 10)),
        request(refund(2, 10)),
        request(refund(3, 10)),
        request(refund(4, 10)),
    ];
    let mut facts = account(0, 0, 0);
    facts.charges.insert(
        2,
        Charge {
            account_id: "bob".into(),
            ..charge_fact(100, 0)
        },
    );
    facts.charges.insert(
        3,
        Charge {
            kind: "adjustment".into(),
            ..charge_fact(100, 0)
        },
    );
    facts.charges.insert(
        4,
        Charge {
            reference: Some(DEBT_REPAYMENT.into()),
            ..charge_fact(100, 0)
        },
    );

    let planned = run(facts, &batch);

    for verdict in &planned.verdicts[..2] {
        assert!(matches!(
            refused(verdict),
            DomainError::NotFound {
                what: "charge entry"
            }
        ));
    }
    for (verdict, entry) in planned.verdicts[2..].iter().zip([3, 4]) {
        let DomainError::Validation(message) = refused(verdict) else {
            panic!("expected a validation error");
        };
        assert_eq!(message, &format!("entry {entry} is not a charge"));
    }
    assert!(planned.rows.is_empty());
}

#[test]
fn every_credit_repays_the_debt_first_with_a_charge_row_naming_it() {
    let order = id(5);
    let batch = [
        request(adjust(30)),
        request(refund(7, 30)),
        request(recharge(order, 100)),
    ];
    let mut facts = account(0, 0, 80);
    facts.charges.insert(7, charge_fact(100, 0));
    facts.orders.insert(
        order,
        CreditableOrder {
            account_id: ACCOUNT.into(),
            status: "pending".into(),
            credits: 100,
        },
    );

    let planned = run(facts, &batch);

    let adjusted = applied(&planned.verdicts[0]);
    assert_eq!(balance(adjusted), (0, 0, 50));
    assert_eq!(adjusted.related.len(), 1);
    let repayment = &adjusted.related[0];
    assert_eq!(repayment.kind, EntryKind::Charge);
    assert_eq!(repayment.amount, -30);
    assert_eq!(repayment.reference.as_deref(), Some(DEBT_REPAYMENT));
    assert_eq!(repayment.related_entry_id, Some(adjusted.entry.entry_id));
    assert_eq!(balance(applied(&planned.verdicts[1])), (0, 0, 20));
    let recharged = applied(&planned.verdicts[2]);
    assert_eq!(balance(recharged), (80, 0, 0));
    assert_eq!(recharged.related[0].amount, -20);
    assert_eq!(recharged.entry.reference, Some(order.to_string()));
    // Three credits and three repayments, in order, each repayment after its credit.
    let kinds: Vec<_> = planned.rows.iter().map(|row| row.entry.kind).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Adjustment,
            EntryKind::Charge,
            EntryKind::Refund,
            EntryKind::Charge,
            EntryKind::Recharge,
            EntryKind::Charge
        ]
    );
    assert_eq!(planned.rows[1].debt_delta, -30);
    assert_eq!(planned.paid_orders.len(), 1);
    assert_eq!(planned.paid_orders[0].1, recharged.entry.entry_id);
}

#[test]
fn a_negative_adjustment_needs_the_funds_and_repays_nothing() {
    let batch = [request(adjust(-101)), request(adjust(-100))];

    let planned = run(account(100, 0, 40), &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::InsufficientCredits {
            available: 100,
            requested: 101
        }
    ));
    let applied = applied(&planned.verdicts[1]);
    assert_eq!(balance(applied), (0, 0, 40));
    assert!(applied.related.is_empty());
}

#[test]
fn a_credit_past_the_largest_balance_is_refused_counting_what_is_held() {
    let order = id(5);
    let batch = [
        request(adjust(11)),
        request(refund(7, 11)),
        request(recharge(order, 11)),
        request(adjust(10)),
    ];
    let mut facts = account(MAX_BALANCE - 20, 10, 0);
    facts.charges.insert(7, charge_fact(100, 0));
    facts.orders.insert(
        order,
        CreditableOrder {
            account_id: ACCOUNT.into(),
            status: "pending".into(),
            credits: 11,
        },
    );

    let planned = run(facts, &batch);

    for verdict in &planned.verdicts[..3] {
        let DomainError::Validation(message) = refused(verdict) else {
            panic!("expected a validation error");
        };
        assert!(message.contains("largest balance"), "{message}");
    }
    assert_eq!(
        balance(applied(&planned.verdicts[3])),
        (MAX_BALANCE - 10, 10, 0)
    );
    assert!(planned.paid_orders.is_empty());
}

#[test]
fn a_recharge_credits_its_order_once_and_only_as_ordered() {
    let (missing, paid, elsewhere, pending) = (id(1), id(2), id(3), id(4));
    let order = |account_id: &str, status: &str| CreditableOrder {
        account_id: account_id.into(),
        status: status.into(),
        credits: 100,
    };
    let batch = [
        request(recharge(missing, 100)),
        request(recharge(paid, 100)),
        request(recharge(elsewhere, 100)),
        request(recharge(pending, 99)),
        request(recharge(pending, 100)),
        request(recharge(pending, 100)),
    ];
    let mut facts = account(0, 0, 0);
    facts.orders.insert(paid, order(ACCOUNT, "paid"));
    facts.orders.insert(elsewhere, order("bob", "pending"));
    facts.orders.insert(pending, order(ACCOUNT, "pending"));

    let planned = run(facts, &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::NotFound {
            what: "payment order"
        }
    ));
    assert!(matches!(
        refused(&planned.verdicts[1]),
        DomainError::AlreadyApplied(_)
    ));
    assert!(matches!(
        refused(&planned.verdicts[2]),
        DomainError::Validation(_)
    ));
    assert!(matches!(
        refused(&planned.verdicts[3]),
        DomainError::Validation(_)
    ));
    let credited = applied(&planned.verdicts[4]);
    assert_eq!(balance(credited), (100, 0, 0));
    // The same order again in the batch is refused like one already paid in the table.
    assert!(matches!(
        refused(&planned.verdicts[5]),
        DomainError::AlreadyApplied(_)
    ));
    assert_eq!(planned.paid_orders.len(), 1);
    assert_eq!(planned.paid_orders[0].0.order_id, pending);
    assert_eq!(planned.paid_orders[0].1, credited.entry.entry_id);
}

#[test]
fn a_hold_moves_credits_from_available_to_held_and_opens_the_hold() {
    let batch = [request(hold(id(1), 300)), request(hold(id(2), 800))];

    let planned = run(account(1_000, 0, 0), &batch);

    let held = applied(&planned.verdicts[0]);
    assert_eq!(balance(held), (700, 300, 0));
    assert_eq!(held.entry.kind, EntryKind::Hold);
    assert_eq!(held.entry.reference.as_deref(), Some("hold"));
    assert_eq!(planned.rows[0].held_delta, 300);
    assert_eq!(planned.rows[0].hold_id, Some(id(1)));
    assert!(matches!(
        refused(&planned.verdicts[1]),
        DomainError::InsufficientCredits {
            available: 700,
            requested: 800
        }
    ));
    assert_eq!(
        planned.writes,
        [SideWrite::OpenHold {
            hold_id: id(1),
            task_id: None,
            amount: 300
        }]
    );
}

#[test]
fn a_hold_for_a_new_task_creates_the_task_before_the_hold() {
    let task_id = id(9);
    let create = TaskWrite::Create(new_task(task_id));
    let batch = [with_task(
        Operation::Hold {
            hold_id: id(1),
            task_id: Some(task_id),
            amount: 100,
        },
        create.clone(),
    )];

    let planned = run(account(1_000, 0, 0), &batch);

    let applied = applied(&planned.verdicts[0]);
    assert_eq!(applied.task, None, "filled in by the store once written");
    assert_eq!(planned.rows[0].task_id, Some(task_id));
    assert_eq!(
        planned.writes,
        [
            SideWrite::Task {
                request: 0,
                write: &create,
                settled: None
            },
            SideWrite::OpenHold {
                hold_id: id(1),
                task_id: Some(task_id),
                amount: 100
            }
        ]
    );
}

fn open(amount: i64, task_id: Option<Uuid>) -> OpenHold {
    OpenHold { amount, task_id }
}

#[test]
fn a_capture_below_the_hold_returns_the_rest() {
    let batch = [request(Operation::Capture {
        hold_id: id(1),
        actual: 60,
    })];
    let mut facts = account(900, 100, 0);
    facts.open_holds.insert(id(1), open(100, Some(id(9))));

    let planned = run(facts, &batch);

    let captured = applied(&planned.verdicts[0]);
    assert_eq!(balance(captured), (940, 0, 0));
    assert_eq!(captured.entry.kind, EntryKind::Capture);
    assert_eq!(captured.entry.amount, 40);
    assert_eq!(captured.entry.task_id, Some(id(9).to_string()));
    assert_eq!(planned.rows[0].held_delta, -100);
    assert_eq!(
        planned.writes,
        [SideWrite::CaptureHold {
            hold_id: id(1),
            actual: 60
        }]
    );
}

#[test]
fn a_capture_above_the_hold_takes_the_difference_and_records_what_is_missing_as_debt() {
    let batch = [
        request(Operation::Capture {
            hold_id: id(1),
            actual: 130,
        }),
        request(Operation::Capture {
            hold_id: id(2),
            actual: 200,
        }),
    ];
    let mut facts = account(50, 200, 0);
    facts.open_holds.insert(id(1), open(100, None));
    facts.open_holds.insert(id(2), open(100, None));

    let planned = run(facts, &batch);

    let within = applied(&planned.verdicts[0]);
    assert_eq!(within.entry.amount, -30);
    assert_eq!(balance(within), (20, 100, 0));
    let beyond = applied(&planned.verdicts[1]);
    assert_eq!(beyond.entry.amount, -20);
    assert_eq!(planned.rows[1].debt_delta, 80);
    assert_eq!(balance(beyond), (0, 0, 80));
}

#[test]
fn a_release_returns_the_hold_whole_and_a_hold_settles_only_once() {
    let batch = [
        request(Operation::Release { hold_id: id(1) }),
        request(Operation::Release { hold_id: id(1) }),
        request(Operation::Capture {
            hold_id: id(1),
            actual: 10,
        }),
        request(Operation::Release { hold_id: id(2) }),
    ];
    let mut facts = account(0, 100, 0);
    facts.open_holds.insert(id(1), open(100, None));

    let planned = run(facts, &batch);

    let released = applied(&planned.verdicts[0]);
    assert_eq!(balance(released), (100, 0, 0));
    assert_eq!(released.entry.kind, EntryKind::Release);
    for verdict in &planned.verdicts[1..] {
        assert!(matches!(refused(verdict), DomainError::Conflict(_)));
    }
    assert_eq!(planned.writes, [SideWrite::ReleaseHold { hold_id: id(1) }]);
}

#[test]
fn a_hold_opened_in_the_batch_can_be_captured_in_it() {
    let batch = [
        request(hold(id(1), 100)),
        request(Operation::Capture {
            hold_id: id(1),
            actual: 100,
        }),
    ];

    let planned = run(account(100, 0, 0), &batch);

    assert_eq!(balance(applied(&planned.verdicts[1])), (0, 0, 0));
    assert_eq!(planned.writes.len(), 2);
}

#[test]
fn a_settling_event_the_state_machine_refuses_leaves_the_hold_open() {
    let task_id = id(9);
    let batch = [
        // A queued task cannot succeed: the capture is refused and writes nothing.
        with_task(
            Operation::Capture {
                hold_id: id(1),
                actual: 10,
            },
            event(task_id, TaskStatus::Succeeded),
        ),
        // A queued task can be canceled: the release applies.
        with_task(
            Operation::Release { hold_id: id(1) },
            event(task_id, TaskStatus::Canceled),
        ),
        // Now canceled, it cannot be canceled again, and the hold is gone anyway.
        with_task(
            Operation::Release { hold_id: id(1) },
            event(task_id, TaskStatus::Canceled),
        ),
        with_task(
            Operation::Release { hold_id: id(2) },
            event(id(404), TaskStatus::Canceled),
        ),
    ];
    let mut facts = account(0, 100, 0);
    facts.open_holds.insert(id(1), open(100, Some(task_id)));
    facts.tasks.insert(
        task_id,
        TaskState {
            status: TaskStatus::Queued,
            units: 10,
        },
    );

    let planned = run(facts, &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::InvalidTransition(_)
    ));
    assert_eq!(balance(applied(&planned.verdicts[1])), (100, 0, 0));
    assert!(matches!(
        refused(&planned.verdicts[2]),
        DomainError::InvalidTransition(_)
    ));
    assert!(matches!(
        refused(&planned.verdicts[3]),
        DomainError::NotFound { what: "task" }
    ));
    assert_eq!(
        planned.writes,
        [
            SideWrite::Task {
                request: 1,
                write: batch[1].task.as_ref().expect("task"),
                settled: None
            },
            SideWrite::ReleaseHold { hold_id: id(1) }
        ]
    );
}

#[test]
fn a_capture_writes_its_task_event_with_the_actual_cost() {
    let task_id = id(9);
    let batch = [with_task(
        Operation::Capture {
            hold_id: id(1),
            actual: 70,
        },
        event(task_id, TaskStatus::Succeeded),
    )];
    let mut facts = account(0, 100, 0);
    facts.open_holds.insert(id(1), open(100, Some(task_id)));
    facts.tasks.insert(
        task_id,
        TaskState {
            status: TaskStatus::Running,
            units: 10,
        },
    );

    let planned = run(facts, &batch);

    assert_eq!(balance(applied(&planned.verdicts[0])), (30, 0, 0));
    assert!(matches!(
        planned.writes[0],
        SideWrite::Task {
            request: 0,
            settled: Some(70),
            ..
        }
    ));
    assert_eq!(
        planned.writes[1],
        SideWrite::CaptureHold {
            hold_id: id(1),
            actual: 70
        }
    );
}

#[test]
fn a_request_whose_claim_ended_is_not_applied_and_its_neighbours_are() {
    let batch = [
        request(charge(100)),
        request(charge(100)),
        request(charge(100)),
    ];
    let mut facts = account(1_000, 0, 0);
    facts.claims_held = vec![true, false, true];

    let planned = run(facts, &batch);

    assert_eq!(balance(applied(&planned.verdicts[0])), (900, 0, 0));
    assert!(matches!(planned.verdicts[1], Verdict::ClaimLost));
    assert_eq!(balance(applied(&planned.verdicts[2])), (800, 0, 0));
    assert_eq!(planned.rows.len(), 2);
}

#[test]
fn every_request_for_a_missing_account_is_refused_and_nothing_is_planned() {
    let batch = [request(charge(1)), request(adjust(5)), request(charge(1))];
    let facts = Facts {
        claims_held: vec![true, true, false],
        ..Facts::default()
    };

    let planned = run(facts, &batch);

    for verdict in &planned.verdicts[..2] {
        assert!(matches!(refused(verdict), DomainError::NotFound { .. }));
    }
    assert!(matches!(planned.verdicts[2], Verdict::ClaimLost));
    assert!(planned.rows.is_empty() && planned.writes.is_empty());
}

#[test]
fn a_balance_leaving_the_i64_range_faults_the_batch_instead_of_wrapping() {
    // Debt at the edge: a capture whose difference is missing overflows the debt.
    let mut facts = account(0, 1, i64::MAX - 10);
    facts.claims_held = vec![true];
    facts.open_holds.insert(id(1), open(1, None));
    let batch = [request(Operation::Capture {
        hold_id: id(1),
        actual: MAX_AMOUNT,
    })];
    assert_eq!(
        plan(ACCOUNT, &batch, facts)
            .map(|_| ())
            .expect_err("a fault"),
        Fault::Overflow
    );

    // Held at the edge: one more held credit overflows it.
    let mut facts = account(10, i64::MAX, 0);
    facts.claims_held = vec![true];
    let batch = [request(hold(id(2), 1))];
    assert_eq!(
        plan(ACCOUNT, &batch, facts)
            .map(|_| ())
            .expect_err("a fault"),
        Fault::Overflow
    );
}

#[test]
fn the_largest_amounts_on_the_largest_balance_are_refused_without_overflow() {
    let batch = [request(adjust(MAX_AMOUNT)), request(charge(MAX_AMOUNT))];

    let planned = run(account(MAX_BALANCE, 0, 0), &batch);

    assert!(matches!(
        refused(&planned.verdicts[0]),
        DomainError::Validation(_)
    ));
    assert_eq!(
        balance(applied(&planned.verdicts[1])),
        (MAX_BALANCE - MAX_AMOUNT, 0, 0)
    );
}

#[test]
fn a_batch_that_outgrows_its_allocated_ids_faults() {
    let mut facts = account(1_000, 0, 0);
    if let Some(account) = &mut facts.account {
        account.ids = vec![41];
    }
    facts.claims_held = vec![true, true];
    let batch = [request(charge(1)), request(charge(1))];

    assert_eq!(
        plan(ACCOUNT, &batch, facts)
            .map(|_| ())
            .expect_err("a fault"),
        Fault::OutOfIds
    );
}

#[test]
fn ids_are_allocated_for_a_debt_repayment_after_every_credit() {
    let batch = [
        request(charge(1)),
        request(adjust(1)),
        request(refund(1, 1)),
        request(recharge(id(1), 1)),
        request(hold(id(1), 1)),
        request(Operation::Release { hold_id: id(1) }),
    ];

    assert_eq!(ids_needed(&batch), 1 + 2 + 2 + 2 + 1 + 1);
}

#[test]
fn needs_name_the_rows_of_held_requests_only_sorted_without_repeats() {
    let batch = [
        request(Operation::Charge {
            amount: 1,
            reason: "test".into(),
            task_id: Some(id(30)),
            metadata: None,
        }),
        request(refund(9, 1)),
        request(refund(3, 1)),
        request(refund(9, 1)),
        request(recharge(id(20), 1)),
        with_task(
            Operation::Capture {
                hold_id: id(11),
                actual: 1,
            },
            event(id(41), TaskStatus::Succeeded),
        ),
        with_task(
            Operation::Release { hold_id: id(10) },
            event(id(40), TaskStatus::Canceled),
        ),
        // A task write on an operation that ignores it names nothing.
        with_task(charge(1), event(id(42), TaskStatus::Canceled)),
        // Not held: names nothing.
        request(refund(99, 1)),
    ];
    let mut held = vec![true; batch.len()];
    held[8] = false;

    let needs = needs(&batch, &held);

    assert_eq!(
        needs,
        Needs {
            charges: vec![3, 9],
            holds: vec![id(10), id(11)],
            charged_tasks: vec![id(30)],
            task_events: vec![id(40), id(41)],
            orders: vec![id(20)],
        }
    );
}

//! The stored form of an account (postcard bytes of `Account`, as snapshots
//! and the Redis write-behind keep it) is a format: it must not change when
//! the in-memory layout does. Accounts built through engine commands (grants,
//! holds in every state, debits, a plan with seats, add-ons and a renewal,
//! long ids, many records past the index threshold and the id cap, expired
//! holds and buckets) are compared byte for byte with a golden capture, and
//! read back into a fresh engine they encode to the same bytes again.
//!
//! `CREDITD_PRINT_GOLDEN=1 cargo test -p creditd-engine --test stored_form -- --nocapture`
//! prints the current bytes (only for a deliberate format change).

use creditd_engine::account::{Cap, Per};
use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::{Clock, TestClock};
use creditd_engine::command::{Charge, Expiry, Mutation, Usage};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::{Engine, MemoryJournal};
use std::fmt::Write as _;
use std::sync::Arc;

const T0: u64 = 1_769_853_600_000; // 2026-01-31T10:00:00Z
const LONG: &str = "grant:a-long-id-stored-outside-the-inline-bytes";

struct Run {
    engine: Engine,
    clock: Arc<TestClock>,
}

impl Run {
    fn new() -> Run {
        let mut config = Config::builtin();
        config.settings.max_ids_per_account = 30;
        config.settings.idempotency_window_ms = 3_600_000;
        config.settings.history_per_account = 100;
        let clock = Arc::new(TestClock::new(T0));
        let engine = Engine::new(
            config,
            clock.clone() as Arc<dyn Clock>,
            Arc::new(MemoryJournal::discarding()),
        );
        Run { engine, clock }
    }

    fn ok(&self, account: &str, m: Mutation) {
        self.engine
            .execute(account.as_bytes(), &m)
            .unwrap_or_else(|e| panic!("{m:?} on {account}: {e}"));
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    fn stored(&self, account: &str) -> Vec<u8> {
        self.engine
            .read(account.as_bytes(), |a| postcard::to_allocvec(a).unwrap())
            .0
    }
}

fn grant(id: &str, amount: u64, kind: BucketKind, expiry: Expiry, priority: u8) -> Mutation<'_> {
    Mutation::Grant {
        grant_id: Bytes(id.as_bytes()),
        amount,
        kind,
        expiry,
        priority,
    }
}

fn reserve<'a>(id: &'a str, charge: Charge<'a>, ttl_ms: Option<u64>) -> Mutation<'a> {
    Mutation::Reserve {
        hold_id: Bytes(id.as_bytes()),
        charge,
        ttl_ms,
        member: None,
    }
}

fn hold_op<'a>(id: &'a str, op: &str, usage: Option<Usage>) -> Mutation<'a> {
    let hold_id = Bytes(id.as_bytes());
    match op {
        "capture" => Mutation::Capture {
            hold_id,
            usage: usage.unwrap(),
        },
        "commit" => Mutation::Commit { hold_id, usage },
        "release" => Mutation::Release { hold_id },
        _ => unreachable!(),
    }
}

fn debit<'a>(id: &'a str, charge: Charge<'a>) -> Mutation<'a> {
    Mutation::Debit {
        debit_id: Bytes(id.as_bytes()),
        charge,
        member: None,
    }
}

/// The accounts and their stored bytes, as hex.
fn build() -> Vec<(&'static str, String)> {
    let r = Run::new();
    let prepaid = BucketKind::Prepaid;

    // One grant: the common account.
    let one = "acct:one";
    r.ok(one, grant("g", 1_000_000, prepaid, Expiry::Never, 50));

    // Holds in every state, several buckets, a long id, skus.
    let mixed = "acct:mixed";
    r.ok(mixed, grant("g1", 1_000, prepaid, Expiry::Never, 50));
    r.ok(
        mixed,
        grant(LONG, 500, BucketKind::Promo, Expiry::Ttl(86_400_000), 10),
    );
    r.ok(
        mixed,
        grant("g3", 70, BucketKind::Addon, Expiry::At(T0 + 7_200_000), 60),
    );
    r.ok(mixed, reserve("h1", Charge::Amount(600), Some(60_000)));
    r.ok(mixed, hold_op("h1", "capture", Some(Usage::Total(50))));
    let pro = Charge::Sku {
        sku: "image/flux-2-pro",
        qty: 2,
    };
    r.ok(mixed, reserve("h2", pro, None));
    r.advance(5);
    r.ok(mixed, hold_op("h1", "commit", Some(Usage::Total(70))));
    r.ok(mixed, debit("d1", Charge::Amount(5)));
    r.ok(mixed, debit("d2", pro));
    r.ok(mixed, reserve("h3", Charge::Amount(3), Some(1_000)));
    r.ok(mixed, reserve("h4", Charge::Amount(4), Some(2_000)));
    r.ok(
        mixed,
        Mutation::Extend {
            hold_id: Bytes(b"h4"),
            ttl_ms: 100_000,
        },
    );
    r.ok(mixed, hold_op("h2", "release", None));
    r.ok(
        mixed,
        reserve(
            "a-hold-id-longer-than-twenty-two-bytes",
            Charge::Amount(9),
            None,
        ),
    );
    r.advance(1_500); // h3 expires
    r.ok(mixed, debit("d3", Charge::Amount(1)));

    // A plan: seats, add-ons, a renewal, an expired cycle bucket.
    let plan = "acct:plan";
    r.ok(
        plan,
        Mutation::Subscribe {
            plan: "pro",
            seats: Some(2),
            anchor_ms: None,
        },
    );
    r.ok(plan, Mutation::Seats { seats: 3 });
    r.ok(plan, Mutation::Addon { units: 2 });
    r.ok(plan, debit("p1", Charge::Amount(30)));
    r.ok(plan, Mutation::Seats { seats: 1 });

    // Many ids: past the index threshold and the id cap (30 here).
    let many = "acct:many";
    r.ok(many, grant("g", 10_000, prepaid, Expiry::Never, 50));
    for n in 0..45 {
        let d = format!("d{n}");
        r.ok(many, debit(&d, Charge::Amount(1)));
        if n % 3 == 0 {
            let h = format!("h{n}");
            r.ok(many, reserve(&h, Charge::Amount(2), None));
            r.ok(many, hold_op(&h, "commit", None));
        }
        r.advance(7);
    }
    for n in 0..5 {
        let g = format!("more{n}");
        r.ok(
            many,
            grant(&g, 5, prepaid, Expiry::Ttl(60_000 * (n + 1)), 50),
        );
    }

    // A team: members with caps per period, a member's open hold, alerts
    // (one fired), refusal stamps.
    let team = "acct:team";
    r.ok(team, grant("g", 1_000, prepaid, Expiry::Never, 50));
    r.ok(
        team,
        Mutation::Alert {
            threshold: 900,
            remove: false,
        },
    );
    r.ok(
        team,
        Mutation::Alert {
            threshold: 100,
            remove: false,
        },
    );
    let cap = |limit, per| Some(Cap { limit, per });
    let limit = |m: &'static str, cap| Mutation::Limit {
        member: Bytes(m.as_bytes()),
        cap,
    };
    r.ok(team, limit("alice", cap(300, Per::Day)));
    r.ok(team, limit("bob", cap(500, Per::Cycle)));
    let mut held = reserve("t1", Charge::Amount(200), Some(60_000));
    if let Mutation::Reserve { member, .. } = &mut held {
        *member = Some(Bytes(b"alice"));
    }
    r.ok(team, held);
    let mut spent = debit("t2", Charge::Amount(50));
    if let Mutation::Debit { member, .. } = &mut spent {
        *member = Some(Bytes(b"carol"));
    }
    r.ok(team, spent);
    let mut over = debit("t3", Charge::Amount(150));
    if let Mutation::Debit { member, .. } = &mut over {
        *member = Some(Bytes(b"alice"));
    }
    r.engine
        .execute(team.as_bytes(), &over)
        .expect_err("alice is over her cap");

    let mut out: Vec<(&'static str, String)> = [one, mixed, plan, many, team]
        .iter()
        .map(|a| (*a, hex(&r.stored(a))))
        .collect();
    roundtrip(&r, &out);

    // Time passes: the plan renews, buckets and holds expire, records age.
    r.advance(40 * 86_400_000);
    let late = "acct:late";
    r.ok(late, grant("g", 10, prepaid, Expiry::Never, 50));
    r.ok(late, reserve("h", Charge::Amount(10), Some(1)));
    r.advance(2);

    let later: Vec<(&'static str, String)> = [mixed, plan, many, late, team]
        .iter()
        .map(|a| (*a, hex(&r.stored(a))))
        .collect();
    roundtrip(&r, &later);
    out.extend(later);
    out
}

/// Read back (as a restore does) and stored again: the same bytes.
fn roundtrip(r: &Run, accounts: &[(&str, String)]) {
    let mut snapshot = Vec::new();
    let fresh = Run::new();
    fresh.clock.set(r.clock.now_ms()).unwrap();
    for i in 0..r.engine.shard_count() {
        snapshot.clear();
        r.engine.snapshot_shard(i, &mut snapshot);
        fresh.engine.restore_shard(&snapshot).unwrap();
    }
    for (name, hex_before) in accounts {
        assert_eq!(
            &hex(&fresh.stored(name)),
            hex_before,
            "{name} after restore"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

#[test]
fn stored_accounts_keep_their_bytes() {
    let accounts = build();
    if std::env::var_os("CREDITD_PRINT_GOLDEN").is_some() {
        for (name, hex) in &accounts {
            println!("(\"{name}\", \"{hex}\"),");
        }
    }
    for ((name, hex), (golden_name, golden)) in accounts.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        assert_eq!(hex, golden, "stored bytes of {name} changed");
    }
    assert_eq!(accounts.len(), GOLDEN.len());
}

/// Captured when accounts gained members and alerts (snapshot 03, Redis schema 3).
#[rustfmt::skip]
const GOLDEN: &[(&str, &str)] = &[
("acct:one", "c0843d000000c0843d0101670103c0843dffffffffffffffffff0132000000018082fb9bc133016700c0843d030032c0843d01018082fb9bc133000167c0843d0180dfd69dc1339c90fb9bc1330180dddb011e64000000"),
("acct:mixed", "a90a0dec0100a20c032f6772616e743a612d6c6f6e672d69642d73746f7265642d6f7574736964652d7468652d696e6c696e652d62797465730204fb0180ba94c5c1330a02000267310103e807ffffffffffffffffff0132000002673303014680bcb29fc1333c000002026834000401d00f0400010204a58f819cc133000026612d686f6c642d69642d6c6f6e6765722d7468616e2d7477656e74792d74776f2d62797465730009000900010209a5f9b19cc1330000098082fb9bc13302673100e807030032e8078082fb9bc1332f6772616e743a612d6c6f6e672d69642d73746f7265642d6f7574736964652d7468652d696e6c696e652d627974657300f403040280b899290adc0b8082fb9bc1330267330046010180bcb29fc1333ca20c8582fb9bc1330268310200d80401e0d403d804460001004646008582fb9bc13302643101000505008582fb9bc133026432010110696d6167652f666c75782d322d70726f02a001008582fb9bc133026832020110696d6167652f666c75782d322d70726f0200a0010001a00100ed89fb9bc13302683302000301e80703000200e18dfb9bc13302643301000101000f0f8082fb9bc13300026731e8078082fb9bc133002f6772616e743a612d6c6f6e672d69642d73746f7265642d6f7574736964652d7468652d696e6c696e652d6279746573f4038082fb9bc13300026733468082fb9bc13301026831d8048082fb9bc13302026831328082fb9bc13301026832a0018582fb9bc13303026831468582fb9bc13306026431058582fb9bc13306026432a0018582fb9bc13301026833038582fb9bc13301026834048582fb9bc13304026832a0018582fb9bc1330126612d686f6c642d69642d6c6f6e6765722d7468616e2d7477656e74792d74776f2d627974657309ed89fb9bc1330502683303e18dfb9bc133060264330103a58f819cc1339c90fb9bc1331080dddb011e64000000"),
("acct:plan", "b60c001e00d40c021170726f40313736393835333630313530350100be0be1adc39dca33320001176164646f6e3a70726f4031373639383533363031353035020178e1adc39dca333200010001e18dfb9bc13302703101001e1e000505e18dfb9bc133080370726fe807e18dfb9bc1330a0370726ff403e18dfb9bc1330b0370726f78e18dfb9bc133060270311ee18dfb9bc1330a0370726f0002e1ead69dc1339c90fb9bc1331580dddb011e64010370726f00f40300013c00e18dfb9bc13300e18dfb9bc133e1adc39dca3303010202000000"),
("acct:many", "de4d004b00a94e06056d6f726530020305fce4fe9bc133320000056d6f726531030305dcb9829cc133320000056d6f726532040305bc8e869cc133320000056d6f7265330503059ce3899cc133320000056d6f726534060305fcb78d9cc13332000001670103c54dffffffffffffffffff01320000001e978ffb9bc1330364323601000101009e8ffb9bc1330364323701000101009e8ffb9bc1330368323702000200020200000200a58ffb9bc133036432380100010100ac8ffb9bc133036432390100010100b38ffb9bc133036433300100010100b38ffb9bc1330368333002000200020200000200ba8ffb9bc133036433310100010100c18ffb9bc133036433320100010100c88ffb9bc133036433330100010100c88ffb9bc1330368333302000200020200000200cf8ffb9bc133036433340100010100d68ffb9bc133036433350100010100dd8ffb9bc133036433360100010100dd8ffb9bc1330368333602000200020200000200e48ffb9bc133036433370100010100eb8ffb9bc133036433380100010100f28ffb9bc133036433390100010100f28ffb9bc1330368333902000200020200000200f98ffb9bc1330364343001000101008090fb9bc1330364343101000101008790fb9bc1330364343201000101008790fb9bc13303683432020002000202000002008e90fb9bc1330364343301000101009590fb9bc1330364343401000101009c90fb9bc133056d6f72653000050302e0d40332ca4d9c90fb9bc133056d6f72653100050302c0a90732cf4d9c90fb9bc133056d6f72653200050302a0fe0a32d44d9c90fb9bc133056d6f7265330005030280d30e32d94d9c90fb9bc133056d6f72653400050302e0a71232de4d5151e18dfb9bc133000167904ee18dfb9bc1330602643001e18dfb9bc1330102683002e18dfb9bc1330302683002e88dfb9bc1330602643101ef8dfb9bc1330602643201f68dfb9bc1330602643301f68dfb9bc1330102683302f68dfb9bc1330302683302fd8dfb9bc1330602643401848efb9bc13306026435018b8efb9bc13306026436018b8efb9bc13301026836028b8efb9bc1330302683602928efb9bc1330602643701998efb9bc1330602643801a08efb9bc1330602643901a08efb9bc1330102683902a08efb9bc1330302683902a78efb9bc133060364313001ae8efb9bc133060364313101b58efb9bc133060364313201b58efb9bc133010368313202b58efb9bc133030368313202bc8efb9bc133060364313301c38efb9bc133060364313401ca8efb9bc133060364313501ca8efb9bc133010368313502ca8efb9bc133030368313502d18efb9bc133060364313601d88efb9bc133060364313701df8efb9bc133060364313801df8efb9bc133010368313802df8efb9bc133030368313802e68efb9bc133060364313901ed8efb9bc133060364323001f48efb9bc133060364323101f48efb9bc133010368323102f48efb9bc133030368323102fb8efb9bc133060364323201828ffb9bc133060364323301898ffb9bc133060364323401898ffb9bc133010368323402898ffb9bc133030368323402908ffb9bc133060364323501978ffb9bc1330603643236019e8ffb9bc1330603643237019e8ffb9bc1330103683237029e8ffb9bc133030368323702a58ffb9bc133060364323801ac8ffb9bc133060364323901b38ffb9bc133060364333001b38ffb9bc133010368333002b38ffb9bc133030368333002ba8ffb9bc133060364333101c18ffb9bc133060364333201c88ffb9bc133060364333301c88ffb9bc133010368333302c88ffb9bc133030368333302cf8ffb9bc133060364333401d68ffb9bc133060364333501dd8ffb9bc133060364333601dd8ffb9bc133010368333602dd8ffb9bc133030368333602e48ffb9bc133060364333701eb8ffb9bc133060364333801f28ffb9bc133060364333901f28ffb9bc133010368333902f28ffb9bc133030368333902f98ffb9bc1330603643430018090fb9bc1330603643431018790fb9bc1330603643432018790fb9bc1330103683432028790fb9bc1330303683432028e90fb9bc1330603643433019590fb9bc1330603643434019c90fb9bc13300056d6f726530059c90fb9bc13300056d6f726531059c90fb9bc13300056d6f726532059c90fb9bc13300056d6f726533059c90fb9bc13300056d6f7265340506fce4fe9bc1339c90fb9bc1336680dddb011e64000000"),
("acct:team", "ee05c8013200e8070101670103ee05ffffffffffffffffff013201000102743100c80101e0d403c801000101c801fce4fe9bc133000105616c696365029c90fb9bc133016700e807030032e8079c90fb9bc1330274320100323201056361726f6c03039c90fb9bc133000167e8079c90fb9bc13301027431c8019c90fb9bc133060274323201fce4fe9bc1339c90fb9bc1336e80dddb011e6400010305616c69636501ac020000000080e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c133c801019c90fb9bc13303626f6201f4030200000080e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c1330000056361726f6c0032323280e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c13300000102640184070000"),
("acct:mixed", "e80700ec01ce02a20c010267310103e807ffffffffffffffffff01320000000013138082fb9bc13300026731e8078082fb9bc133002f6772616e743a612d6c6f6e672d69642d73746f7265642d6f7574736964652d7468652d696e6c696e652d6279746573f4038082fb9bc13300026733468082fb9bc13301026831d8048082fb9bc13302026831328082fb9bc13301026832a0018582fb9bc13303026831468582fb9bc13306026431058582fb9bc13306026432a0018582fb9bc13301026833038582fb9bc13301026834048582fb9bc13304026832a0018582fb9bc1330126612d686f6c642d69642d6c6f6e6765722d7468616e2d7477656e74792d74776f2d627974657309ed89fb9bc1330502683303e18dfb9bc1330602643301a58f819cc1330502683404a5f9b19cc1330526612d686f6c642d69642d6c6f6e6765722d7468616e2d7477656e74792d74776f2d62797465730980bcb29fc133070267334680ba94c5c133072f6772616e743a612d6c6f6e672d69642d73746f7265642d6f7574736964652d7468652d696e6c696e652d6279746573880203ffffffffffffffffff019ed0f48bce331080dddb011e64000000"),
("acct:plan", "ec04001eb60cc011021170726f40313737323237323830313530350300f403e1f5d79ad433320001176164646f6e3a70726f4031373732323732383031353035040178e1f5d79ad43332000100000909e18dfb9bc133080370726fe807e18dfb9bc1330a0370726ff403e18dfb9bc1330b0370726f78e18dfb9bc133060270311ee18dfb9bc1330a0370726f00e1adc39dca33071170726f4031373639383533363031353035be0be1adc39dca3307176164646f6e3a70726f403137363938353336303135303578e1adc39dca33090370726ff403e1adc39dca330b0370726f7804e1f5d79ad4339ed0f48bce331580dddb011e64010370726f00f40300013c00e18dfb9bc13301e1adc39dca33e1f5d79ad43301010202000000"),
("acct:many", "c54d004b19a94e0101670103c54dffffffffffffffffff0132000000005656e18dfb9bc133000167904ee18dfb9bc1330602643001e18dfb9bc1330102683002e18dfb9bc1330302683002e88dfb9bc1330602643101ef8dfb9bc1330602643201f68dfb9bc1330602643301f68dfb9bc1330102683302f68dfb9bc1330302683302fd8dfb9bc1330602643401848efb9bc13306026435018b8efb9bc13306026436018b8efb9bc13301026836028b8efb9bc1330302683602928efb9bc1330602643701998efb9bc1330602643801a08efb9bc1330602643901a08efb9bc1330102683902a08efb9bc1330302683902a78efb9bc133060364313001ae8efb9bc133060364313101b58efb9bc133060364313201b58efb9bc133010368313202b58efb9bc133030368313202bc8efb9bc133060364313301c38efb9bc133060364313401ca8efb9bc133060364313501ca8efb9bc133010368313502ca8efb9bc133030368313502d18efb9bc133060364313601d88efb9bc133060364313701df8efb9bc133060364313801df8efb9bc133010368313802df8efb9bc133030368313802e68efb9bc133060364313901ed8efb9bc133060364323001f48efb9bc133060364323101f48efb9bc133010368323102f48efb9bc133030368323102fb8efb9bc133060364323201828ffb9bc133060364323301898ffb9bc133060364323401898ffb9bc133010368323402898ffb9bc133030368323402908ffb9bc133060364323501978ffb9bc1330603643236019e8ffb9bc1330603643237019e8ffb9bc1330103683237029e8ffb9bc133030368323702a58ffb9bc133060364323801ac8ffb9bc133060364323901b38ffb9bc133060364333001b38ffb9bc133010368333002b38ffb9bc133030368333002ba8ffb9bc133060364333101c18ffb9bc133060364333201c88ffb9bc133060364333301c88ffb9bc133010368333302c88ffb9bc133030368333302cf8ffb9bc133060364333401d68ffb9bc133060364333501dd8ffb9bc133060364333601dd8ffb9bc133010368333602dd8ffb9bc133030368333602e48ffb9bc133060364333701eb8ffb9bc133060364333801f28ffb9bc133060364333901f28ffb9bc133010368333902f28ffb9bc133030368333902f98ffb9bc1330603643430018090fb9bc1330603643431018790fb9bc1330603643432018790fb9bc1330103683432028790fb9bc1330303683432028e90fb9bc1330603643433019590fb9bc1330603643434019c90fb9bc13300056d6f726530059c90fb9bc13300056d6f726531059c90fb9bc13300056d6f726532059c90fb9bc13300056d6f726533059c90fb9bc13300056d6f72653405fce4fe9bc13307056d6f72653005dcb9829cc13307056d6f72653105bc8e869cc13307056d6f726532059ce3899cc13307056d6f72653305fcb78d9cc13307056d6f7265340506ffffffffffffffffff019ed0f48bce336680dddb011e64000000"),
("acct:late", "0a0000000a01016701030affffffffffffffffff0132000000029cd0f48bce330167000a0300320a9dd0f48bce33016802000a01010a00020003039cd0f48bce330001670a9cd0f48bce330101680a9dd0f48bce330501680a019cadd08dce339ed0f48bce337080dddb011e64000000"),
("acct:team", "b607003200e8070101670103b607ffffffffffffffffff01320000000004049c90fb9bc133000167e8079c90fb9bc13301027431c8019c90fb9bc1330602743232fce4fe9bc13305027431c80101ffffffffffffffffff019ed0f48bce336e80dddb011e6400010305616c69636501ac020000000080e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c13300019c90fb9bc13303626f6201f4030200000080e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c1330000056361726f6c0032323280e0e58ac1338098ffb3c13380d0eab6b7338098ffb3c13380d0eab6b7338098ffb3c13300000102640184070000"),
];

//! A video generation gateway on creditd: quote the job, hold its credits by
//! SKU with a TTL, keep the hold alive with a heartbeat, report usage as it
//! grows, commit what was actually produced, release on failure, and tell the
//! user when credits are short.
//!
//! Run it against a creditd with the built-in rate card:
//!
//!     cargo run -p creditd &
//!     cargo run -p creditd-client --example gateway -- redis://127.0.0.1:6479/

use creditd_client::{Charge, Client, Error, GrantOptions, OpId, Usage};
use std::time::Duration;

/// 250 credits per second of 1080p video with audio (built-in rate card).
const SKU: &str = "video/kling-2.6-pro/1080/audio";
/// How long the hold lives without a heartbeat: if the gateway dies, the
/// credits come back by themselves this long after its last beat.
const HOLD_TTL: Duration = Duration::from_secs(120);
/// A beat every third of the TTL, so two missed beats still keep the hold.
const HEARTBEAT: Duration = Duration::from_secs(40);
/// COMMIT rounds before a settlement is left for later: with the client's
/// own retry budget (20 s) in each, about as long as the hold lives.
const SETTLE_ROUNDS: u32 = 4;

/// One generation request, as the gateway's queue hands it over.
pub struct Job {
    /// The job's id, used as its hold id: the same id on every retry, so a
    /// request handled twice (a redelivered message) holds and charges once.
    pub id: OpId,
    pub account: String,
    /// Seconds of video asked for: what the hold covers.
    pub seconds: u64,
    /// Stands in for the model provider: the seconds it delivers, or the
    /// second after which it fails.
    pub provider: Provider,
}

pub enum Provider {
    Delivers(u64),
    FailsAfter(u64),
}

/// What the user is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: `charged` credits for `seconds` of video, after a quote of
    /// `quoted`.
    Done {
        quoted: u64,
        seconds: u64,
        charged: u64,
    },
    /// Not started: the job needs `need` credits, the account has
    /// `available`. Offer a top-up.
    NeedsCredits { need: u64, available: u64 },
    /// The provider failed. The seconds delivered before the failure were
    /// captured (and stay charged); the rest of the hold, `refunded`, went
    /// back to the account.
    Failed { refunded: u64 },
}

/// Runs one job from its quote to its settlement.
pub async fn generate(client: &Client, job: &Job) -> Result<Outcome, Error> {
    let account = job.account.as_str();
    // The price, to show before the job starts. RESERVE prices it again;
    // the hold keeps that price whatever the rate card does meanwhile.
    let quoted = client.quote(SKU, job.seconds).await?;

    let charge = Charge::sku(SKU, job.seconds);
    match client
        .reserve(account, &job.id, charge, Some(HOLD_TTL))
        .await
    {
        Ok(_held) => {}
        Err(Error::Insufficient { need, available }) => {
            return Ok(Outcome::NeedsCredits { need, available });
        }
        Err(e) => return Err(e),
    }

    // The heartbeat runs until the hold is settled, so that a slow
    // settlement cannot outlive the hold.
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        job.account.clone(),
        job.id.clone(),
    ));
    let outcome = match render(client, job).await {
        Ok(seconds) => {
            // The actual quantity: the rest of the hold goes back.
            let charged = settle(client, account, &job.id, Usage::Qty(seconds)).await;
            charged.map(|charged| Outcome::Done {
                quoted,
                seconds,
                charged,
            })
        }
        Err(why) => {
            eprintln!("job {}: {why}", job.id);
            // Should this fail too, the hold expires after its TTL and its
            // credits come back all the same.
            let refunded = client.release(account, &job.id).await;
            refunded.map(|refunded| Outcome::Failed { refunded })
        }
    };
    heartbeat.abort();
    outcome
}

/// Runs the job with the provider, capturing usage after every second
/// delivered, so that a gateway crash mid-job loses at most a second of
/// billing. CAPTURE takes the total so far, not the increment: a repeated
/// or late report changes nothing.
async fn render(client: &Client, job: &Job) -> Result<u64, String> {
    let (delivers, fails_after) = match job.provider {
        Provider::Delivers(n) => (n, None),
        Provider::FailsAfter(n) => (n, Some(n)),
    };
    for second in 1..=delivers {
        tokio::time::sleep(Duration::from_millis(20)).await; // rendering
        client
            .capture(&job.account, &job.id, Usage::Qty(second))
            .await
            .map_err(|e| e.to_string())?;
    }
    match fails_after {
        Some(n) => Err(format!("the provider failed after {n} s")),
        None => Ok(delivers),
    }
}

/// Keeps the hold alive while the job runs; the first beat goes at once.
async fn heartbeat(client: Client, account: String, hold: OpId) {
    let mut beats = tokio::time::interval(HEARTBEAT);
    loop {
        beats.tick().await;
        match client.extend(&account, &hold, HOLD_TTL).await {
            Ok(_expires_at) => {}
            // Committed, released or expired: nothing left to keep alive.
            Err(Error::Conflict(_) | Error::Expired(_) | Error::NotFound(_)) => return,
            // creditd unreachable for the client's whole retry budget: the
            // next beat tries again, and the TTL outlasts two missed beats.
            Err(_) => {}
        }
    }
}

/// COMMITs the hold. The client retries timeouts and `BUSY` by itself,
/// within a bounded budget; an error still retryable after that means that
/// creditd was unreachable and the outcome is unknown. Never release or
/// reserve again then: send the same COMMIT (same id, same usage) again. If
/// the first one was applied, creditd repeats its reply and debits nothing
/// more. After `SETTLE_ROUNDS` the error goes to the caller, which keeps the
/// job's id and usage to settle later.
pub async fn settle(
    client: &Client,
    account: &str,
    hold: &OpId,
    usage: Usage,
) -> Result<u64, Error> {
    let mut round = 1;
    loop {
        match client.commit(account, hold, Some(usage)).await {
            Err(e) if e.is_retryable() && round < SETTLE_ROUNDS => {
                eprintln!("commit of {hold}: {e}; retrying with the same id");
                round += 1;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Grants `account` 3000 credits and runs three jobs on it: one that
/// delivers less than it asked for, one the account cannot afford, and one
/// whose provider fails.
pub async fn tour(client: &Client, account: &str) -> Result<Vec<Outcome>, Error> {
    client
        .grant(account, &OpId::new(), 3000, &GrantOptions::default())
        .await?;
    let job = |seconds, provider| Job {
        id: OpId::new(),
        account: account.to_owned(),
        seconds,
        provider,
    };
    let short = job(10, Provider::Delivers(7));
    let first = generate(client, &short).await?;
    // The same COMMIT again, as after a lost reply: creditd repeats its
    // first reply and debits nothing more.
    let again = settle(client, account, &short.id, Usage::Qty(7)).await?;
    assert_eq!(
        first,
        Outcome::Done {
            quoted: 2500,
            seconds: 7,
            charged: again
        }
    );
    let unaffordable = generate(client, &job(10, Provider::Delivers(10))).await?;
    let failing = generate(client, &job(4, Provider::FailsAfter(2))).await?;
    Ok(vec![first, unaffordable, failing])
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6479/".to_owned());
    let client = Client::connect(&url).await?;
    let account = format!("gateway-demo-{}", OpId::new());
    for outcome in tour(&client, &account).await? {
        println!("{outcome:?}");
    }
    println!("{:?}", client.balance(&account).await?);
    Ok(())
}

//! Getting messages to one receiver without ever holding up a deployment: a bounded
//! mailbox per receiver (when full, the oldest message is dropped and counted), one tokio
//! task per receiver posting them in order, each retried with exponential backoff and
//! jitter (`backon`). The HTTP request itself runs on a plain thread of its own, so a
//! receiver that hangs can delay neither the runtime nor the process's exit. Errors are
//! described in words of our own and scrubbed of the URL: it is a secret.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::Notify;

use super::SecretUrl;
use crate::metrics::Metrics;

/// How many messages wait per receiver before the oldest is dropped.
pub const MAILBOX: usize = 64;
/// One HTTP attempt's bound: connect, send, answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of one message after its first attempt, and their delays.
const RETRIES: usize = 5;
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// One message: its JSON body, and what it is about (for the log).
pub struct Message {
    pub body: String,
    pub about: String,
}

/// A bounded queue that never blocks its sender: full, it drops its oldest message.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<(VecDeque<Message>, bool)>,
    wake: Notify,
}

impl Mailbox {
    /// Queues `message`; returns the message dropped to make room, if any.
    pub fn push(&self, message: Message) -> Option<Message> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let dropped = (queue.0.len() >= MAILBOX)
            .then(|| queue.0.pop_front())
            .flatten();
        queue.0.push_back(message);
        drop(queue);
        self.wake.notify_one();
        dropped
    }

    /// No more messages will come: the worker ends once the queue is empty.
    pub fn close(&self) {
        self.queue.lock().expect("not poisoned").1 = true;
        self.wake.notify_one();
    }

    /// The messages still waiting, taken out (`--once` ends without them).
    pub fn drain(&self) -> Vec<Message> {
        self.queue
            .lock()
            .expect("not poisoned")
            .0
            .drain(..)
            .collect()
    }

    /// The next message, waiting for one; `None` once closed and empty.
    async fn next(&self) -> Option<Message> {
        loop {
            {
                let mut queue = self.queue.lock().expect("not poisoned");
                if let Some(message) = queue.0.pop_front() {
                    return Some(message);
                }
                if queue.1 {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }
}

/// The worker of one receiver: posts each message of `mailbox` in turn until it is closed
/// and empty, counting every outcome under `name`.
pub async fn worker(name: String, url: SecretUrl, mailbox: Arc<Mailbox>, metrics: Arc<Metrics>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(true)
        .build()
        .into();
    while let Some(message) = mailbox.next().await {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .with_max_times(RETRIES)
            .build();
        loop {
            match post(&agent, &url, &message.body).await {
                Ok(()) => {
                    metrics.notification(&name, "sent");
                    tracing::debug!(notification = %name, "sent: {}", message.about);
                    break;
                }
                Err(error) => {
                    metrics.notification(&name, "failed");
                    let Some(delay) = delays.next() else {
                        metrics.notification(&name, "gave_up");
                        tracing::warn!(notification = %name, "gave up sending after {} attempts ({error}): {}", RETRIES + 1, message.about);
                        break;
                    };
                    tracing::warn!(notification = %name, "sending failed ({error}); retrying in {:.1}s", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// One POST of `body`, on a thread of its own; the error in words without the URL.
async fn post(agent: &ureq::Agent, url: &SecretUrl, body: &str) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (agent, target, body) = (agent.clone(), url.expose().to_string(), body.to_string());
    std::thread::spawn(move || {
        let answer = agent
            .post(&target)
            .header("content-type", "application/json")
            .send(body)
            .map(drop)
            .map_err(|e| describe(&e));
        let _ = tx.send(answer);
    });
    let answer = rx
        .await
        .unwrap_or_else(|_| Err("the request thread ended without an answer".to_string()));
    answer.map_err(|e| url.scrub(&e))
}

fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::StatusCode(code) => format!("the receiver answered HTTP {code}"),
        ureq::Error::Timeout(_) => format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
        ureq::Error::BadUri(_) => "the URL is not a valid http(s) URL".to_string(),
        ureq::Error::HostNotFound => "the URL's host name does not resolve".to_string(),
        ureq::Error::Io(e) => format!("{e}"),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Message {
        Message {
            body: n.to_string(),
            about: String::new(),
        }
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_its_oldest_message_and_never_blocks() {
        let mailbox = Mailbox::default();
        for n in 0..MAILBOX {
            assert!(mailbox.push(message(n)).is_none());
        }
        let dropped = mailbox
            .push(message(MAILBOX))
            .expect("full: the oldest goes");
        assert_eq!(dropped.body, "0");
        mailbox.close();
        let mut got = vec![];
        while let Some(m) = mailbox.next().await {
            got.push(m.body.parse::<usize>().unwrap());
        }
        assert_eq!(
            got,
            (1..=MAILBOX).collect::<Vec<_>>(),
            "in order, then closed"
        );
    }
}

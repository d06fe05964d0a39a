//! Password hashes are slow and memory-hungry on purpose (argon2id takes
//! about 19 MiB per check), so they run on a fixed set of threads of their
//! own, fed through a bounded queue. Past the queue, or past a few checks in
//! flight from one client address, a check is refused at once instead of
//! waiting: memory stays bounded by the number of workers, and one client
//! cannot take every place in the queue.
//!
//! Dedicated threads also keep the allocator's arenas few: on the runtime's
//! blocking pool every new thread could keep its own 19 MiB after a check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Why a check was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full: every worker is busy and the queue too.
    Queue,
    /// This client address already has its share of checks in flight.
    Client,
}

/// Sizes of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Threads hashing at once.
    pub workers: usize,
    /// Checks waiting for a worker, fleet-wide on this replica.
    pub queue: usize,
    /// Checks in flight (waiting or running) from one client address.
    pub per_client: usize,
}

impl PoolOptions {
    /// A worker per core up to four (four argon2id checks hold about 76
    /// MiB and verify some 80 logins a second; remembered credentials and
    /// tokens skip the pool), eight queued checks per worker, and two in
    /// flight per worker for one client.
    pub fn for_this_machine() -> PoolOptions {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
        PoolOptions { workers, queue: workers * 8, per_client: workers * 2 }
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions::for_this_machine()
    }
}

/// The hashing threads.
#[derive(Debug)]
pub struct HashPool {
    sender: Mutex<Sender<Job>>,
    options: PoolOptions,
    /// Places for checks, running or waiting: workers + queue. Taken before
    /// a job is sent, given back when it is done, so the bound holds
    /// however quickly the workers pick jobs up.
    places: Arc<tokio::sync::Semaphore>,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Releases a client's place when its check is over (also when the waiting
/// request is dropped: the job still runs, and releases it then).
struct Place {
    client: IpAddr,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

impl HashPool {
    pub fn new(options: PoolOptions) -> HashPool {
        let options = PoolOptions {
            workers: options.workers.max(1),
            queue: options.queue,
            per_client: options.per_client.max(1),
        };
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..options.workers {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("berth-hash-{i}")).spawn(move || loop {
                // The lock is held only while taking a job, not while running it.
                let job = match receiver.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return, // the pool is gone
                };
                job();
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
            }
        }
        let places = Arc::new(tokio::sync::Semaphore::new(options.workers + options.queue));
        HashPool { sender: Mutex::new(sender), options, places, in_flight: Arc::default() }
    }

    pub fn options(&self) -> PoolOptions {
        self.options
    }

    /// Run `check` on a hashing thread, or refuse at once when busy.
    pub async fn run<T, F>(&self, client: IpAddr, check: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let Ok(slot) = self.places.clone().try_acquire_owned() else { return Err(Busy::Queue) };
        let place = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(client).or_insert(0);
            if *n >= self.options.per_client {
                return Err(Busy::Client);
            }
            *n += 1;
            Place { client, in_flight: self.in_flight.clone() }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = check();
            drop((place, slot));
            let _ = tx.send(result);
        });
        if self.sender.lock().unwrap_or_else(|p| p.into_inner()).send(job).is_err() {
            // No worker is left (each one failed to start): the job, and
            // with it both places, is dropped here.
            return Err(Busy::Queue);
        }
        // A worker that panicked dropped the sender: count it as busy.
        rx.await.map_err(|_| Busy::Queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounded_workers_queue_and_share_per_client() {
        let pool = Arc::new(HashPool::new(PoolOptions { workers: 2, queue: 3, per_client: 4 }));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let job = |running: Arc<AtomicUsize>, peak: Arc<AtomicUsize>, gate: Arc<(Mutex<bool>, std::sync::Condvar)>| {
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let (lock, cv) = &*gate;
                let mut open = lock.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                running.fetch_sub(1, Ordering::SeqCst);
                7
            }
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // One poll of `run` takes a place and queues the job (it only waits
        // after that), so the queue's contents are known exactly.
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let mut check = Box::pin(pool.run(a, job(running.clone(), peak.clone(), gate.clone())));
            let polled = futures::poll!(&mut check);
            assert!(polled.is_pending(), "{polled:?}");
            waiting.push(check);
        }
        // Two run, two wait in the queue.
        while running.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Client a has its four in flight: a fifth is refused for the client.
        assert_eq!(pool.run(a, || 1).await, Err(Busy::Client));
        // Client b takes the last place in the queue; then the queue is full.
        let mut check = Box::pin(pool.run(b, job(running.clone(), peak.clone(), gate.clone())));
        assert!(futures::poll!(&mut check).is_pending());
        waiting.push(check);
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(pool.run(c, || 1).await, Err(Busy::Queue));
        assert!(pool.in_flight.lock().unwrap().get(&c).is_none(), "a refused check keeps no place");
        // Open the gate: everything queued completes, never more than two at once.
        {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        for w in waiting {
            assert_eq!(w.await, Ok(7));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert!(pool.in_flight.lock().unwrap().is_empty());
        assert_eq!(pool.run(c, || 3).await, Ok(3));
    }
}

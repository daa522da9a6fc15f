//! Password hashing on a small pool of long-lived threads, each reusing one argon2 memory
//! buffer.
//!
//! argon2 needs `memory_kib` of scratch memory per hash. On tokio's blocking pool each hash
//! ran on whichever of up to 512 threads was free, each with its own malloc arena, and a login
//! flood left the process gigabytes larger. Here a fixed set of threads each keeps one buffer
//! for the life of the process, so memory after a flood is what it was before, and a bounded
//! queue refuses (503) rather than letting waiting hashes pile up.

use crate::UserError;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// argon2id cost and pool settings. The cost defaults are OWASP's recommendation (19 MiB,
/// 2 passes).
#[derive(Debug, Clone, Copy)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Hashing threads; each keeps a `memory_kib` buffer once it has hashed.
    pub concurrency: usize,
    /// Hashes that may wait for a thread; more are refused with [`UserError::Busy`].
    pub queue: usize,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            concurrency: 2,
            queue: 64,
        }
    }
}

/// The most memory a stored hash may ask for when verified (1 GiB): a corrupt or hostile
/// row must not make the server allocate without bound.
const MAX_VERIFY_KIB: u32 = 1024 * 1024;

type Job = Box<dyn FnOnce(&mut Hasher) + Send>;

/// The pool: hashing threads behind one bounded queue.
pub(crate) struct HashPool {
    jobs: flume::Sender<Job>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("queued", &self.jobs.len())
            .finish()
    }
}

impl HashPool {
    /// Starts `concurrency` threads (at least one); they end when the pool is dropped.
    pub(crate) fn start(p: HashParams) -> Result<Self, UserError> {
        let params = Params::new(p.memory_kib.max(8), p.iterations.max(1), 1, None)
            .map_err(|e| UserError::Hashing(format!("argon2 parameters: {e}").into()))?;
        let (jobs, queue) = flume::bounded::<Job>(p.queue);
        for i in 0..p.concurrency.max(1) {
            let queue = queue.clone();
            let mut hasher = Hasher::new(params.clone());
            std::thread::Builder::new()
                .name(format!("im-hash-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job(&mut hasher);
                    }
                })
                .map_err(|e| UserError::Hashing(format!("starting a thread: {e}").into()))?;
        }
        Ok(Self { jobs })
    }

    /// A new PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`) for `password`.
    pub(crate) async fn hash(&self, password: String) -> Result<String, UserError> {
        self.run(move |h| h.hash(password.as_bytes())).await?
    }

    /// Whether `password` matches the stored PHC string `phc` (any argon2 variant and
    /// cost it names, so hashes made under other settings keep working).
    pub(crate) async fn verify(&self, password: String, phc: String) -> Result<bool, UserError> {
        self.run(move |h| h.verify(password.as_bytes(), &phc)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Hasher) -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |h| {
            let _ = tx.send(work(h));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => UserError::Busy,
            flume::TrySendError::Disconnected(_) => {
                UserError::Hashing("the threads are gone".into())
            }
        })?;
        rx.await
            .map_err(|_| UserError::Hashing("a thread failed".into()))
    }
}

/// One thread's state: the configured cost and the memory buffer it reuses.
struct Hasher {
    argon: Argon2<'static>,
    params: Params,
    /// Grown to the configured size on first use, then kept.
    blocks: Vec<Block>,
}

impl Hasher {
    fn new(params: Params) -> Self {
        Self {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            params,
            blocks: Vec::new(),
        }
    }

    /// This thread's buffer, grown to `n` blocks if `n` is within the configured size. A
    /// larger stored cost (hashed before the cost was lowered) gets a buffer of its own for
    /// that one hash, so the kept buffer never outgrows the configuration.
    fn with_blocks<T>(&mut self, n: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        if n > self.params.block_count() {
            return f(&mut vec![Block::new(); n]);
        }
        if self.blocks.len() < n {
            self.blocks.resize(n, Block::new());
        }
        f(&mut self.blocks[..n])
    }

    fn hash(&mut self, password: &[u8]) -> Result<String, UserError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| UserError::Randomness(im_protocol::Cause::new(e)))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let argon = self.argon.clone();
        self.with_blocks(self.params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, &salt, &mut out, blocks)
        })
        .map_err(|e| UserError::Hashing(format!("argon2: {e}").into()))?;
        let hashing =
            |e: argon2::password_hash::Error| UserError::Hashing(format!("argon2: {e}").into());
        let salt = SaltString::encode_b64(&salt).map_err(hashing)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(hashing)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(hashing)?),
        };
        Ok(phc.to_string())
    }

    fn verify(&mut self, password: &[u8], phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
            return false;
        };
        let version = match hash.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        if params.m_cost() > MAX_VERIFY_KIB {
            tracing::warn!(
                m_cost = params.m_cost(),
                "a stored password hash asks for too much memory"
            );
            return false;
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut computed = [0u8; Output::MAX_LENGTH];
        let computed = &mut computed[..expected.len()];
        let argon = Argon2::new(algorithm, version, params.clone());
        let ok = self.with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, salt, computed, blocks)
        });
        ok.is_ok() && bool::from(computed.ct_eq(expected.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    fn cheap() -> HashParams {
        HashParams {
            memory_kib: 64,
            iterations: 1,
            concurrency: 2,
            queue: 16,
        }
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let pool = HashPool::start(cheap()).unwrap();
        let phc = pool.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            pool.verify("correct horse".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify("correct hors".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify("correct horse".into(), "garbage".into())
                .await
                .unwrap()
        );
        // The same password hashes differently each time (a fresh salt).
        assert_ne!(pool.hash("correct horse".into()).await.unwrap(), phc);
    }

    /// Hashes stored by the code before the pool (argon2's own `PasswordHasher`, at another
    /// cost, even another variant) keep verifying, and the pool's hashes verify with argon2's
    /// own verifier.
    #[tokio::test]
    async fn the_stored_format_is_argon2s_own() {
        let pool = HashPool::start(cheap()).unwrap();
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        for (alg, m, t) in [
            (Algorithm::Argon2id, 128, 2),
            (Algorithm::Argon2id, 32, 1),
            (Algorithm::Argon2i, 64, 1),
        ] {
            let old = Argon2::new(alg, Version::V0x13, Params::new(m, t, 1, None).unwrap());
            let phc = old
                .hash_password(b"old password", &salt)
                .unwrap()
                .to_string();
            assert!(
                pool.verify("old password".into(), phc.clone())
                    .await
                    .unwrap()
            );
            assert!(!pool.verify("new password".into(), phc).await.unwrap());
        }
        let phc = pool.hash("new password".into()).await.unwrap();
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"new password", &parsed)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_waited_on() {
        let pool = std::sync::Arc::new(
            HashPool::start(HashParams {
                concurrency: 1,
                queue: 1,
                ..cheap()
            })
            .unwrap(),
        );
        // Hold the only thread, then fill the one queue slot.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let p = pool.clone();
        let busy = tokio::spawn(async move {
            p.run(move |_| {
                let _ = started.send(());
                let _ = held.recv();
            })
            .await
        });
        running.await.unwrap();
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.hash("queued".into()).await });
        while pool.jobs.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.hash("refused".into()).await, Err(UserError::Busy));
        release.send(()).unwrap();
        assert!(queued.await.unwrap().is_ok());
        busy.await.unwrap().unwrap();
    }
}

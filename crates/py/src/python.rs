//! The PyO3 module `confide._native`. Thin: each function converts its arguments, calls the
//! operation in the crate root, and returns JSON text or plain values; failures become the
//! exception class of their [`Kind`]. The typed API, docstrings and type hints are in
//! `python/confide`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use confide_governance::identity::{Identity, TlsKey};
use confide_governance::manifest::SignedManifest;
use confide_net::client::{ControlSession, Events};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{Error, Kind};

create_exception!(
    confide,
    ConfideError,
    PyException,
    "Any failure reported by Confide."
);
create_exception!(
    confide,
    IdentityError,
    ConfideError,
    "A key file: unreadable, not Ed25519, or a wrong or missing passphrase."
);
create_exception!(
    confide,
    ManifestError,
    ConfideError,
    "A job file or manifest that is invalid, or a signature that does not verify."
);
create_exception!(
    confide,
    PolicyError,
    ConfideError,
    "An invalid policy file."
);
create_exception!(
    confide,
    AccountingError,
    ConfideError,
    "Privacy parameters outside their domain, or an unreachable target."
);
create_exception!(
    confide,
    PartitionError,
    ConfideError,
    "A split that cannot be made."
);
create_exception!(
    confide,
    ModelError,
    ConfideError,
    "A released model's files are missing or do not match their card."
);
create_exception!(
    confide,
    RefusedError,
    ConfideError,
    "The coordinator refused the request (a numbered rule, or no permission)."
);
create_exception!(
    confide,
    NotFoundError,
    ConfideError,
    "No such job, or none the caller may see."
);
create_exception!(
    confide,
    UnavailableError,
    ConfideError,
    "The coordinator could not be reached, or its answer did not check out."
);
create_exception!(
    confide,
    UsageError,
    ConfideError,
    "Bad arguments, or a file that already exists."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        let m = e.message;
        match e.kind {
            Kind::Identity => IdentityError::new_err(m),
            Kind::Manifest => ManifestError::new_err(m),
            Kind::Policy => PolicyError::new_err(m),
            Kind::Accounting => AccountingError::new_err(m),
            Kind::Partition => PartitionError::new_err(m),
            Kind::Model => ModelError::new_err(m),
            Kind::Refused => RefusedError::new_err(m),
            Kind::NotFound => NotFoundError::new_err(m),
            Kind::Unavailable => UnavailableError::new_err(m),
            Kind::Usage => UsageError::new_err(m),
        }
    }
}

fn json_text(v: &serde_json::Value) -> String {
    v.to_string()
}

/// A party's signing identity (an Ed25519 key, with the TLS key bound to it when new).
#[pyclass(module = "confide._native", frozen)]
#[derive(Debug)]
struct NativeIdentity {
    id: Identity,
    tls: Option<TlsKey>,
}

#[pymethods]
impl NativeIdentity {
    #[staticmethod]
    #[pyo3(signature = (tls = true))]
    fn generate(tls: bool) -> PyResult<Self> {
        let (id, tls) = crate::generate_identity(tls)?;
        Ok(Self { id, tls })
    }

    #[staticmethod]
    #[pyo3(signature = (path, passphrase = None))]
    fn load(path: PathBuf, passphrase: Option<String>) -> PyResult<Self> {
        let id = crate::load_identity(&path, passphrase.as_deref())?;
        Ok(Self { id, tls: None })
    }

    #[pyo3(signature = (path, passphrase = None))]
    fn save(&self, path: PathBuf, passphrase: Option<String>) -> PyResult<String> {
        let v = crate::save_identity(&self.id, self.tls.as_ref(), &path, passphrase.as_deref())?;
        Ok(json_text(&v))
    }

    #[getter]
    fn party_id(&self) -> String {
        self.id.id()
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.id.public_key())
    }
}

/// A validated job (its TOML file's spec).
#[pyclass(module = "confide._native", frozen)]
#[derive(Debug)]
struct NativeJob {
    spec: confide_core::JobSpec,
}

#[pymethods]
impl NativeJob {
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Ok(Self {
            spec: crate::load_job(&path)?,
        })
    }

    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        Ok(Self {
            spec: crate::parse_job(text)?,
        })
    }

    #[getter]
    fn job_id(&self) -> String {
        self.spec.job.id.clone()
    }

    #[getter]
    fn scheme(&self) -> String {
        self.spec.job.scheme.as_str().to_string()
    }

    #[getter]
    fn rounds(&self) -> u32 {
        self.spec.job.rounds
    }

    /// Returns the job with the graph's model, and what was imported (JSON).
    fn model_from_onnx(&self, path: PathBuf) -> PyResult<(NativeJob, String)> {
        let (spec, summary) = crate::model_from_onnx(&self.spec, &path)?;
        Ok((NativeJob { spec }, json_text(&summary)))
    }

    /// Returns the job with the code bundle attached, and its digest.
    fn attach_code(
        &self,
        dir: PathBuf,
        bundle: &str,
        entry: &str,
        lock: &str,
        env: &str,
    ) -> PyResult<(NativeJob, String)> {
        let (spec, digest) = crate::attach_code(&self.spec, &dir, (bundle, entry, lock, env))?;
        Ok((NativeJob { spec }, digest))
    }

    #[getter]
    fn code_json(&self) -> String {
        serde_json::to_string(&self.spec.code).unwrap_or_default()
    }

    #[getter]
    fn model_json(&self) -> String {
        serde_json::to_string(&self.spec.model).unwrap_or_default()
    }

    #[pyo3(signature = (owner, recipients = Vec::new()))]
    fn sign(&self, owner: &NativeIdentity, recipients: Vec<String>) -> PyResult<NativeSignedJob> {
        Ok(NativeSignedJob {
            signed: Mutex::new(crate::sign_job(&self.spec, &owner.id, recipients)?),
        })
    }
}

/// A signed manifest.
#[pyclass(module = "confide._native", frozen)]
#[derive(Debug)]
struct NativeSignedJob {
    signed: Mutex<SignedManifest>,
}

impl NativeSignedJob {
    fn get(&self) -> PyResult<std::sync::MutexGuard<'_, SignedManifest>> {
        self.signed
            .lock()
            .map_err(|_| ConfideError::new_err("internal: a manifest's lock was poisoned"))
    }
}

#[pymethods]
impl NativeSignedJob {
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        let signed = SignedManifest::load(&path).map_err(crate::manifest_error)?;
        Ok(Self {
            signed: Mutex::new(signed),
        })
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        let signed = SignedManifest::from_json(text).map_err(crate::manifest_error)?;
        Ok(Self {
            signed: Mutex::new(signed),
        })
    }

    fn to_json(&self) -> PyResult<String> {
        Ok(self.get()?.to_json())
    }

    #[pyo3(signature = (path, overwrite = false))]
    fn save(&self, path: PathBuf, overwrite: bool) -> PyResult<()> {
        Ok(crate::save_manifest(&*self.get()?, &path, overwrite)?)
    }

    #[getter]
    fn hash(&self) -> PyResult<String> {
        Ok(self.get()?.hash.clone())
    }

    fn verify(&self) -> PyResult<String> {
        Ok(json_text(&crate::verify_manifest(&*self.get()?)?))
    }

    fn approve(&self, approver: &NativeIdentity) -> PyResult<()> {
        let mut signed = self.get()?;
        let mut next = signed.clone();
        next.approve(&approver.id).map_err(crate::manifest_error)?;
        *signed = next;
        Ok(())
    }

    fn review_code(&self, reviewer: &NativeIdentity) -> PyResult<()> {
        let mut signed = self.get()?;
        let mut next = signed.clone();
        next.review_code(&reviewer.id)
            .map_err(crate::manifest_error)?;
        *signed = next;
        Ok(())
    }

    fn describes(&self, job: &NativeJob) -> PyResult<bool> {
        Ok(crate::describes(&*self.get()?, &job.spec)?)
    }

    #[pyo3(signature = (policy, records = None))]
    fn review(&self, policy: PathBuf, records: Option<usize>) -> PyResult<String> {
        Ok(json_text(&crate::review(&*self.get()?, &policy, records)?))
    }
}

#[pyfunction]
#[pyo3(signature = (q, sigma, steps, delta, accountant = "rdp"))]
fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64, accountant: &str) -> PyResult<f64> {
    Ok(crate::epsilon(q, sigma, steps, delta, accountant)?)
}

#[pyfunction]
#[pyo3(signature = (target_epsilon, q, steps, delta, accountant = "rdp"))]
fn sigma(target_epsilon: f64, q: f64, steps: u64, delta: f64, accountant: &str) -> PyResult<f64> {
    Ok(crate::sigma(target_epsilon, q, steps, delta, accountant)?)
}

/// Seals a user code worker: no program started, no new process, signals only to itself
/// (seccomp filters that cannot be removed; `confide_trainer::sandbox::seal_worker`).
/// `confide.worker` calls it before it reads anything from the node.
#[pyfunction]
fn seal_worker() -> PyResult<()> {
    confide_trainer::sandbox::seal_worker()
        .map_err(|e| ConfideError::new_err(format!("cannot seal the worker: {e}")))
}

#[pyfunction]
#[pyo3(signature = (labels, owners, how, seed, groups = None, alpha = None, beta = None, shards_per_owner = None))]
#[allow(clippy::too_many_arguments)]
fn partition(
    labels: Vec<u32>,
    owners: usize,
    how: &str,
    seed: u64,
    groups: Option<Vec<String>>,
    alpha: Option<f64>,
    beta: Option<f64>,
    shards_per_owner: Option<usize>,
) -> PyResult<Vec<Vec<usize>>> {
    let how = crate::partitioner(how, alpha, beta, shards_per_owner)?;
    Ok(crate::partition(
        &labels,
        groups.as_deref(),
        owners,
        &how,
        seed,
    )?)
}

/// Returns the card (JSON text) and each tensor as (name, shape, little-endian f32 bytes).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load_model<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(String, Vec<(String, Vec<usize>, Bound<'py, PyBytes>)>)> {
    let m = crate::load_model(&path)?;
    let tensors = m
        .tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, PyBytes::new(py, &bytes))
        })
        .collect();
    Ok((json_text(&m.card), tensors))
}

fn runtime() -> PyResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfideError::new_err(format!("cannot start an I/O runtime: {e}")))
}

/// A connection to a coordinator's Control API.
#[pyclass(module = "confide._native", frozen)]
#[derive(Debug)]
struct NativeCoordinator {
    rt: Arc<tokio::runtime::Runtime>,
    session: Arc<tokio::sync::Mutex<ControlSession>>,
}

/// How often a blocked call looks for Ctrl-C (Python's signal handlers run only when the
/// interpreter gets control back).
const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs `fut` to its end without holding the GIL, checking for Python signals (Ctrl-C)
/// meanwhile: a call that waits for days (`events(follow=True)` on a job awaiting approval)
/// stays interruptible. An interrupted call is dropped, which cancels it.
fn wait<T: Send>(
    py: Python<'_>,
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = crate::Result<T>> + Send,
) -> PyResult<T> {
    py.detach(|| {
        rt.block_on(async {
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return out.map_err(PyErr::from),
                    () = tokio::time::sleep(SIGNAL_CHECK) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}

impl NativeCoordinator {
    /// Runs a call on the session without holding the GIL, interruptibly ([`wait`]).
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> FnOnce(
            &'a mut ControlSession,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = crate::Result<T>> + Send + 'a>,
        > + Send,
    ) -> PyResult<T> {
        let session = self.session.clone();
        wait(py, &self.rt, async move {
            let mut s = session.lock().await;
            f(&mut s).await
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> crate::Result<String> {
    serde_json::to_string(v).map_err(|e| Error::new(Kind::Unavailable, e))
}

#[pymethods]
impl NativeCoordinator {
    #[new]
    #[pyo3(signature = (address, fed, name, passphrase = None, server_name = "coordinator".to_string()))]
    fn new(
        py: Python<'_>,
        address: String,
        fed: PathBuf,
        name: String,
        passphrase: Option<String>,
        server_name: String,
    ) -> PyResult<Self> {
        let rt = Arc::new(runtime()?);
        let session = wait(py, &rt, async move {
            Ok(
                ControlSession::open(&address, &server_name, &fed, &name, passphrase.as_deref())
                    .await?,
            )
        })?;
        Ok(Self {
            rt,
            session: Arc::new(tokio::sync::Mutex::new(session)),
        })
    }

    /// Returns (record JSON, created, dashboard address).
    fn submit(&self, py: Python<'_>, manifest: Vec<u8>) -> PyResult<(String, bool, String)> {
        self.call(py, move |s| {
            Box::pin(async move {
                let r = s.submit(manifest).await?;
                Ok((to_json(&r.record)?, r.created, r.url))
            })
        })
    }

    #[pyo3(signature = (state = None))]
    fn list(&self, py: Python<'_>, state: Option<String>) -> PyResult<String> {
        self.call(py, move |s| {
            Box::pin(async move { to_json(&s.list(state.as_deref()).await?) })
        })
    }

    fn status(&self, py: Python<'_>, job: String) -> PyResult<String> {
        self.call(py, move |s| {
            Box::pin(async move { to_json(&s.status(&job).await?) })
        })
    }

    fn cancel(&self, py: Python<'_>, job: String, reason: String) -> PyResult<String> {
        self.call(py, move |s| {
            Box::pin(async move { to_json(&s.cancel(&job, &reason).await?) })
        })
    }

    /// Writes the model, card and report into `out`; returns (weights, card) paths and the
    /// job's record JSON.
    fn download(
        &self,
        py: Python<'_>,
        job: String,
        out: PathBuf,
    ) -> PyResult<(String, String, String)> {
        self.call(py, move |s| {
            Box::pin(async move {
                let release = s.download(&job).await?;
                let (w, c) = release
                    .write(&out)
                    .map_err(|e| Error::new(Kind::Model, e))?;
                Ok((
                    w.display().to_string(),
                    c.display().to_string(),
                    to_json(&release.record)?,
                ))
            })
        })
    }

    fn nodes(&self, py: Python<'_>) -> PyResult<String> {
        self.call(py, move |s| {
            Box::pin(async move { to_json(&s.nodes().await?) })
        })
    }

    #[pyo3(signature = (job, start = 0, follow = false))]
    fn events(
        &self,
        py: Python<'_>,
        job: String,
        start: u64,
        follow: bool,
    ) -> PyResult<NativeEvents> {
        let events = self.call(py, move |s| {
            Box::pin(async move { Ok(s.events(&job, start, follow).await?) })
        })?;
        Ok(NativeEvents {
            rt: self.rt.clone(),
            events: Arc::new(tokio::sync::Mutex::new(events)),
        })
    }
}

/// A job's events, one JSON text at a time.
#[pyclass(module = "confide._native", frozen)]
#[derive(Debug)]
struct NativeEvents {
    rt: Arc<tokio::runtime::Runtime>,
    events: Arc<tokio::sync::Mutex<Events>>,
}

#[pymethods]
impl NativeEvents {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let events = self.events.clone();
        let next = wait(py, &self.rt, async move {
            Ok(events.lock().await.next().await?)
        })?;
        match next {
            Some(e) => Ok(Some(to_json(&e)?)),
            None => Ok(None),
        }
    }
}

/// The module `confide._native`.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<NativeIdentity>()?;
    m.add_class::<NativeJob>()?;
    m.add_class::<NativeSignedJob>()?;
    m.add_class::<NativeCoordinator>()?;
    m.add_class::<NativeEvents>()?;
    m.add_function(wrap_pyfunction!(epsilon, m)?)?;
    m.add_function(wrap_pyfunction!(sigma, m)?)?;
    m.add_function(wrap_pyfunction!(partition, m)?)?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(seal_worker, m)?)?;
    for (name, class) in [
        ("ConfideError", py.get_type::<ConfideError>()),
        ("IdentityError", py.get_type::<IdentityError>()),
        ("ManifestError", py.get_type::<ManifestError>()),
        ("PolicyError", py.get_type::<PolicyError>()),
        ("AccountingError", py.get_type::<AccountingError>()),
        ("PartitionError", py.get_type::<PartitionError>()),
        ("ModelError", py.get_type::<ModelError>()),
        ("RefusedError", py.get_type::<RefusedError>()),
        ("NotFoundError", py.get_type::<NotFoundError>()),
        ("UnavailableError", py.get_type::<UnavailableError>()),
        ("UsageError", py.get_type::<UsageError>()),
    ] {
        m.add(name, class)?;
    }
    Ok(())
}

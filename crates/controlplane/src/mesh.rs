//! The reference demo's lakehouse-catalog scenario (reference §6): the
//! catalog operations a seeder enqueues, the catalog workers apply them
//! to, and the HTTP RPC client both use. `omnirelay demo` runs the seeder
//! and the workers; the control plane serves `POST /demo/enqueue` and
//! `GET /demo/catalogs` with the same shapes.
//!
//! JSON follows the reference's web defaults: camelCase names, enums as
//! their names, payload bodies as base64.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use omnirelay_replication::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tls::{self, HostClient};

/// The RPC namespace of the demo's dispatcher.
pub const NAMESPACE: &str = "resourcelease.mesh";
/// The service name the demo's client sends (`Rpc-Service`).
pub const SERVICE: &str = "resourcelease-mesh-demo";
/// The caller every enqueue carries (`Rpc-Caller`), hence the peer id of
/// every `Enqueue` event.
pub const CALLER: &str = "mesh-demo-host";
/// The resource type of every catalog operation.
pub const RESOURCE_TYPE: &str = "lakehouse.catalog";
/// The error code of every failure a worker reports.
pub const FAILURE_CODE: &str = "mesh.demo.failure";
/// The default catalogs.
pub const CATALOGS: [&str; 3] = ["fabric-lakehouse", "delta-lab", "governance-hub"];
/// The default database prefixes.
pub const DATABASE_PREFIXES: [&str; 5] = ["sales", "billing", "ml", "governance", "security"];
/// The default principals.
pub const PRINCIPALS: [&str; 5] = [
    "spark-streaming",
    "trino-bi",
    "governor",
    "fabric-sync",
    "delta-maintenance",
];

/// What an operation does to a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationType {
    /// Creates the table (version 1 of a new table).
    CreateTable,
    /// Adds or changes a column.
    AlterSchema,
    /// Commits a snapshot.
    CommitSnapshot,
    /// Vacuums old files.
    Vacuum,
}

impl OperationType {
    /// Its name, as in attributes and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateTable => "CreateTable",
            Self::AlterSchema => "AlterSchema",
            Self::CommitSnapshot => "CommitSnapshot",
            Self::Vacuum => "Vacuum",
        }
    }
}

/// One catalog operation: the body of a work item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The catalog.
    pub catalog: String,
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
    /// What it does.
    pub operation_type: OperationType,
    /// The table's version after it.
    pub version: i32,
    /// Who asked.
    pub principal: String,
    /// The table's columns after it.
    pub columns: Vec<String>,
    /// What changed.
    pub changes: Vec<String>,
    /// The snapshot it commits.
    pub snapshot_id: String,
    /// When it was made (the reference's JSON time form).
    pub timestamp: String,
    /// The request id.
    pub request_id: String,
    /// `{catalog}.{database}.{table}.v{version:D4}` (written for readers;
    /// recomputed, not trusted, when read).
    #[serde(default, skip_deserializing)]
    pub resource_id: String,
}

impl Operation {
    /// `{catalog}.{database}.{table}.v{version:D4}`.
    pub fn computed_resource_id(&self) -> String {
        format!(
            "{}.{}.{}.v{:04}",
            self.catalog, self.database, self.table, self.version
        )
    }

    /// The reference's payload JSON of the work item carrying it.
    pub fn payload(&self) -> Value {
        let mut op = self.clone();
        op.resource_id = op.computed_resource_id();
        let body = serde_json::to_vec(&op).unwrap_or_default();
        json!({
            "resourceType": RESOURCE_TYPE,
            "resourceId": op.resource_id,
            "partitionKey": op.catalog,
            "payloadEncoding": "application/json",
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "attributes": {
                "catalog": op.catalog,
                "database": op.database,
                "table": op.table,
                "operation": op.operation_type.name(),
                "version": op.version.to_string(),
            },
            "requestId": op.request_id,
        })
    }

    /// The operation a work item's payload (reference JSON) carries.
    ///
    /// # Errors
    ///
    /// When the body is missing, not base64 or not an operation.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let body = payload["body"]
            .as_str()
            .ok_or_else(|| "the payload has no body".to_owned())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("the body is not base64: {e}"))?;
        let mut op: Self = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the body is not a catalog operation: {e}"))?;
        op.resource_id = op.computed_resource_id();
        Ok(op)
    }
}

/// A new random id in the reference's GUID "N" form.
fn guid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The body of `POST /demo/enqueue` (the reference's `MeshEnqueueRequest`):
/// every field optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnqueueRequest {
    /// Default `fabric-lakehouse`.
    pub catalog: String,
    /// Default `sales`.
    pub database: String,
    /// Default `ad_hoc`.
    pub table: String,
    /// Default `CommitSnapshot`.
    pub operation: OperationType,
    /// Default 1.
    pub version: i32,
    /// Default `cli.enqueue`.
    pub principal: String,
    /// Default `["id STRING", "payload STRING"]`.
    pub columns: Option<Vec<String>>,
    /// Default: the columns.
    pub changes: Option<Vec<String>>,
    /// Replaces the default attributes.
    pub attributes: Option<BTreeMap<String, String>>,
    /// A body to send as is instead of an operation.
    pub body: Option<String>,
    /// Default: a new id.
    pub request_id: Option<String>,
}

impl Default for EnqueueRequest {
    fn default() -> Self {
        Self {
            catalog: "fabric-lakehouse".to_owned(),
            database: "sales".to_owned(),
            table: "ad_hoc".to_owned(),
            operation: OperationType::CommitSnapshot,
            version: 1,
            principal: "cli.enqueue".to_owned(),
            columns: None,
            changes: None,
            attributes: None,
            body: None,
            request_id: None,
        }
    }
}

impl EnqueueRequest {
    /// The work item's payload, as the reference builds it.
    pub fn payload(&self) -> Value {
        let request_id = self.request_id.clone().unwrap_or_else(guid);
        let mut attributes = self.attributes.clone().unwrap_or_else(|| {
            BTreeMap::from([
                ("catalog".to_owned(), self.catalog.clone()),
                ("database".to_owned(), self.database.clone()),
                ("table".to_owned(), self.table.clone()),
            ])
        });
        let blank = self.body.as_deref().is_none_or(|b| b.trim().is_empty());
        let (body, resource_id) = if blank {
            let columns = self
                .columns
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| vec!["id STRING".to_owned(), "payload STRING".to_owned()]);
            let changes = self
                .changes
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| columns.clone());
            let mut op = Operation {
                catalog: self.catalog.clone(),
                database: self.database.clone(),
                table: self.table.clone(),
                operation_type: self.operation,
                version: self.version,
                principal: self.principal.clone(),
                columns,
                changes,
                snapshot_id: guid(),
                timestamp: Timestamp::now().to_json_string(),
                request_id: request_id.clone(),
                resource_id: String::new(),
            };
            op.resource_id = op.computed_resource_id();
            attributes.insert("operation".to_owned(), self.operation.name().to_owned());
            attributes.insert("version".to_owned(), self.version.to_string());
            (serde_json::to_vec(&op).unwrap_or_default(), op.resource_id)
        } else {
            (
                self.body.clone().unwrap_or_default().into_bytes(),
                format!("{}.{}.{}.manual", self.catalog, self.database, self.table),
            )
        };
        json!({
            "resourceType": RESOURCE_TYPE,
            "resourceId": resource_id,
            "partitionKey": self.catalog,
            "payloadEncoding": "application/json",
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "attributes": attributes,
            "requestId": request_id,
        })
    }
}

/// A table as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableState {
    /// The catalog.
    pub catalog: String,
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
    /// Its version.
    pub version: i32,
    /// The operation that made it.
    pub operation: OperationType,
    /// Its columns.
    pub columns: Vec<String>,
    /// Who made it.
    pub principal: String,
    /// Its snapshot.
    pub snapshot_id: String,
    /// When (the operation's timestamp).
    pub updated_at: String,
}

/// What applying an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new table.
    Created,
    /// A newer version.
    Updated,
    /// The version the table already has: acknowledged, nothing changes.
    Duplicate,
    /// An older version than the table's: refused.
    Stale,
}

/// The in-memory catalog the workers apply operations to (the
/// reference's `LakehouseCatalogState`).
#[derive(Debug, Default)]
pub struct Catalog {
    tables: BTreeMap<String, TableState>,
    recent: VecDeque<Operation>,
}

/// Operations the catalog remembers.
const RECENT_OPERATIONS: usize = 128;

impl Catalog {
    /// Applies `op`: a new table, a newer version, the same version
    /// (duplicate) or an older one (stale, nothing recorded).
    pub fn apply(&mut self, op: &Operation) -> Outcome {
        let key = format!("{}::{}::{}", op.catalog, op.database, op.table).to_lowercase();
        let outcome = match self.tables.get(&key) {
            Some(existing) if op.version < existing.version => return Outcome::Stale,
            Some(existing) if op.version == existing.version => Outcome::Duplicate,
            Some(_) => Outcome::Updated,
            None => Outcome::Created,
        };
        if outcome != Outcome::Duplicate {
            self.tables.insert(
                key,
                TableState {
                    catalog: op.catalog.clone(),
                    database: op.database.clone(),
                    table: op.table.clone(),
                    version: op.version,
                    operation: op.operation_type,
                    columns: op.columns.clone(),
                    principal: op.principal.clone(),
                    snapshot_id: op.snapshot_id.clone(),
                    updated_at: op.timestamp.clone(),
                },
            );
        }
        if self.recent.len() == RECENT_OPERATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(op.clone());
        outcome
    }

    /// The reference's catalog snapshot JSON: `observedAt`, up to 50
    /// `tables` (highest version first) and the 50 oldest of the recent
    /// operations.
    pub fn snapshot(&self) -> Value {
        let mut tables: Vec<&TableState> = self.tables.values().collect();
        tables.sort_by(|a, b| {
            b.version
                .cmp(&a.version)
                .then_with(|| a.catalog.cmp(&b.catalog))
                .then_with(|| a.database.cmp(&b.database))
                .then_with(|| a.table.cmp(&b.table))
        });
        tables.truncate(50);
        let recent: Vec<&Operation> = self.recent.iter().take(50).collect();
        json!({
            "observedAt": Timestamp::now().to_json_string(),
            "tables": tables,
            "recentOperations": recent,
        })
    }

    /// The table count.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether it has no table.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

struct SeedTable {
    catalog: String,
    database: String,
    table: String,
    version: i32,
    columns: Vec<String>,
}

/// Makes the seeder's operations with the reference's mix: tables are
/// created until there are five, then with a chance of 25%; otherwise an
/// existing table gets an alter (25%), a commit (45%) or a vacuum (30%).
pub struct Seeder {
    rng: fastrand::Rng,
    tables: Vec<SeedTable>,
    created: u32,
}

impl Default for Seeder {
    fn default() -> Self {
        Self::new(fastrand::Rng::new())
    }
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder")
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl Seeder {
    /// A seeder drawing from `rng`.
    pub fn new(rng: fastrand::Rng) -> Self {
        Self {
            rng,
            tables: Vec::new(),
            created: 0,
        }
    }

    /// The next operation.
    pub fn next_operation(&mut self) -> Operation {
        let create = self.tables.len() < 5 || self.rng.f64() < 0.25;
        let (index, operation_type) = if create {
            let prefix = DATABASE_PREFIXES[self.rng.usize(..DATABASE_PREFIXES.len())];
            self.created += 1;
            self.tables.push(SeedTable {
                catalog: CATALOGS[self.rng.usize(..CATALOGS.len())].to_owned(),
                database: format!("{prefix}_db_{}", self.rng.u32(1..5)),
                table: format!("{prefix}_table_{:03}", self.created),
                version: 0,
                columns: Vec::new(),
            });
            (self.tables.len() - 1, OperationType::CreateTable)
        } else {
            let roll = self.rng.f64();
            let kind = if roll < 0.25 {
                OperationType::AlterSchema
            } else if roll < 0.7 {
                OperationType::CommitSnapshot
            } else {
                OperationType::Vacuum
            };
            (self.rng.usize(..self.tables.len()), kind)
        };
        let changes = match operation_type {
            OperationType::CreateTable => {
                let mut columns: Vec<String> = [
                    "table_id STRING",
                    "created_at TIMESTAMP",
                    "updated_at TIMESTAMP",
                    "region STRING",
                ]
                .map(str::to_owned)
                .to_vec();
                if self.rng.f64() > 0.5 {
                    columns.push("tenant_id STRING".to_owned());
                }
                if self.rng.f64() > 0.5 {
                    columns.push("is_deleted BOOLEAN".to_owned());
                }
                self.tables[index].columns.clone_from(&columns);
                columns
            }
            OperationType::AlterSchema => vec![self.alter(index)],
            OperationType::Vacuum => vec![format!("vacuum retention={}d", self.rng.u32(7..31))],
            OperationType::CommitSnapshot => vec![format!("commit snapshot {}", guid())],
        };
        let principal = PRINCIPALS[self.rng.usize(..PRINCIPALS.len())].to_owned();
        let table = &mut self.tables[index];
        table.version += 1;
        let mut op = Operation {
            catalog: table.catalog.clone(),
            database: table.database.clone(),
            table: table.table.clone(),
            operation_type,
            version: table.version,
            principal,
            columns: table.columns.clone(),
            changes,
            snapshot_id: guid(),
            timestamp: Timestamp::now().to_json_string(),
            request_id: guid(),
            resource_id: String::new(),
        };
        op.resource_id = op.computed_resource_id();
        op
    }

    fn alter(&mut self, index: usize) -> String {
        let columns = &mut self.tables[index].columns;
        if self.rng.f64() < 0.5 || columns.len() < 6 {
            let column = format!("metric_{} DOUBLE", self.rng.u32(1..20));
            columns.push(column.clone());
            return format!("ADD COLUMN {column}");
        }
        let at = self.rng.usize(..columns.len());
        let mut changed = columns[at].replace("DOUBLE", "DECIMAL(18,4)");
        if changed == columns[at] {
            changed = columns[at].replace("STRING", "VARCHAR(256)");
        }
        columns[at].clone_from(&changed);
        format!("ALTER COLUMN {changed}")
    }
}

/// An RPC error a dispatcher answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// The HTTP status (0 when nothing answered).
    pub status: u16,
    /// `Rpc-Error-Code`.
    pub code: Option<String>,
    /// `Rpc-Error-Message`, or what went wrong.
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, self.status) {
            (_, 0) => write!(f, "{}", self.message),
            (Some(code), status) => write!(f, "{status} {code}: {}", self.message),
            (None, status) => write!(f, "{status}: {}", self.message),
        }
    }
}

impl std::error::Error for RpcError {}

/// The demo's client of a dispatcher's HTTP RPC (the reference's
/// `ResourceLeaseHttpClient`): `POST {url}/omnirelay/v1/{namespace}`
/// with `Rpc-Procedure: {namespace}::{op}`, `Rpc-Service`,
/// `Rpc-Encoding: application/json` and `Rpc-Caller: mesh-demo-host`.
#[derive(Clone, Debug)]
pub struct RpcClient {
    url: String,
    namespace: String,
    token: Option<String>,
    client: HostClient<Full<Bytes>>,
}

/// A leased item.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The whole lease response.
    pub response: Value,
}

impl Lease {
    /// The ownership token to complete or fail it with.
    pub fn token(&self) -> &Value {
        &self.response["ownershipToken"]
    }
}

impl RpcClient {
    /// A client of the dispatcher at `url` serving `namespace`.
    pub fn new(url: &str, namespace: &str, token: Option<String>) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            namespace: namespace.to_owned(),
            token,
            client: tls::client(tls::plain()),
        }
    }

    /// The same client, trusting the authority whose PEM certificates are
    /// `ca_pem` for an `https://` URL, or without it the system's roots.
    ///
    /// # Errors
    ///
    /// `ca_pem` holds no PEM certificate, or the system's roots cannot be
    /// loaded.
    pub fn trusting_authority(self, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let https = self.url.starts_with("https://");
        if !https {
            return Ok(self);
        }
        Ok(self.trusting(Arc::new(crate::tls::config(ca_pem, true)?)))
    }

    /// The same client, trusting `config` for an `https://` URL (a client
    /// from [`RpcClient::new`] speaks plain HTTP only).
    pub(crate) fn trusting(self, config: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        Self {
            client: tls::client(config),
            ..self
        }
    }

    /// Calls `procedure` with `body`; the response JSON.
    ///
    /// # Errors
    ///
    /// The dispatcher's RPC error, or a transport failure (status 0).
    pub async fn call(
        &self,
        procedure: &str,
        body: &Value,
        ttl: Option<Duration>,
    ) -> Result<Value, RpcError> {
        let transport = |message: String| RpcError {
            status: 0,
            code: None,
            message,
        };
        let mut request =
            hyper::Request::post(format!("{}/omnirelay/v1/{}", self.url, self.namespace))
                .header("content-type", "application/json")
                .header("rpc-procedure", format!("{}::{procedure}", self.namespace))
                .header("rpc-service", SERVICE)
                .header("rpc-encoding", "application/json")
                .header("rpc-caller", CALLER);
        if let Some(ttl) = ttl {
            request = request.header("rpc-ttl-ms", ttl.as_millis().to_string());
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| transport(format!("bad dispatcher URL {}: {e}", self.url)))?;
        let response = self.client.request(request).await.map_err(|e| {
            transport(format!(
                "{} did not answer: {}",
                self.url,
                crate::hosts::with_causes(&e)
            ))
        })?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let code = header("rpc-error-code");
        let message = header("rpc-error-message");
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                transport(format!(
                    "{} broke off its answer: {}",
                    self.url,
                    crate::hosts::with_causes(&e)
                ))
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(RpcError {
                status: status.as_u16(),
                code,
                message: message.unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| RpcError {
            status: status.as_u16(),
            code: None,
            message: format!("the answer is not JSON: {e}"),
        })
    }

    /// Enqueues a work item with `payload` (reference JSON).
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub async fn enqueue(&self, payload: &Value) -> Result<Value, RpcError> {
        self.call("enqueue", &json!({ "payload": payload }), None)
            .await
    }

    /// Leases an item for `peer`, waiting up to `wait`; `None` when none
    /// came.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub async fn lease(&self, peer: &str, wait: Duration) -> Result<Option<Lease>, RpcError> {
        match self
            .call("lease", &json!({ "peerId": peer }), Some(wait))
            .await
        {
            Ok(response) => Ok(Some(Lease { response })),
            Err(e) if e.status == 504 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Completes a lease.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub async fn complete(&self, token: &Value) -> Result<(), RpcError> {
        self.call("complete", &json!({ "ownershipToken": token }), None)
            .await
            .map(drop)
    }

    /// Fails a lease as the demo's workers do: code `mesh.demo.failure`,
    /// metadata `{source: mesh-demo}`.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub async fn fail(&self, token: &Value, requeue: bool, reason: &str) -> Result<(), RpcError> {
        let body = json!({
            "ownershipToken": token,
            "reason": reason,
            "errorCode": FAILURE_CODE,
            "requeue": requeue,
            "metadata": { "source": "mesh-demo" },
        });
        self.call("fail", &body, None).await.map(drop)
    }
}

/// What the demo's seeder and workers did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Operations enqueued.
    pub enqueued: AtomicU64,
    /// Enqueues the dispatcher refused or never answered.
    pub enqueue_errors: AtomicU64,
    /// Operations that created a table.
    pub created: AtomicU64,
    /// Operations that updated a table.
    pub updated: AtomicU64,
    /// Duplicates, completed.
    pub duplicates: AtomicU64,
    /// Stale operations, failed without requeue.
    pub stale: AtomicU64,
    /// Bodies that were no operation, failed without requeue.
    pub invalid: AtomicU64,
    /// RPC failures of the workers.
    pub worker_errors: AtomicU64,
}

/// Enqueues of the seeder, by `outcome` (`enqueued`, `refused`: refused
/// or never answered).
pub const ENQUEUES_TOTAL: &str = "omnirelay_mesh_enqueues_total";
/// Items a worker leased, by `peer` and `outcome` (`created`, `updated`,
/// `duplicate`: completed; `stale`, `invalid`: failed without requeue).
pub const ITEMS_TOTAL: &str = "omnirelay_mesh_items_total";
/// RPC calls of a worker the dispatcher refused or never answered, by
/// `peer`.
pub const RPC_ERRORS_TOTAL: &str = "omnirelay_mesh_rpc_errors_total";

impl Counters {
    /// Creates the seeder's metric series at zero, so that a rate or
    /// increase over them counts the first of each.
    pub fn register_seeder() {
        for outcome in ["enqueued", "refused"] {
            metrics::counter!(ENQUEUES_TOTAL, "outcome" => outcome).increment(0);
        }
    }

    /// Creates worker `peer`'s metric series at zero (see
    /// [`Counters::register_seeder`]).
    pub fn register_worker(peer: &str) {
        for outcome in ["created", "updated", "duplicate", "stale", "invalid"] {
            metrics::counter!(ITEMS_TOTAL, "peer" => peer.to_owned(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!(RPC_ERRORS_TOTAL, "peer" => peer.to_owned()).increment(0);
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An enqueue, done or not: counted here and as a metric.
    fn enqueue(&self, done: bool) {
        let (counter, outcome) = if done {
            (&self.enqueued, "enqueued")
        } else {
            (&self.enqueue_errors, "refused")
        };
        Self::bump(counter);
        metrics::counter!(ENQUEUES_TOTAL, "outcome" => outcome).increment(1);
    }

    /// An item `peer` leased and dealt with as `outcome` says (`None`:
    /// its payload was no operation).
    fn item(&self, peer: &str, outcome: Option<Outcome>) {
        let (counter, label) = match outcome {
            Some(Outcome::Created) => (&self.created, "created"),
            Some(Outcome::Updated) => (&self.updated, "updated"),
            Some(Outcome::Duplicate) => (&self.duplicates, "duplicate"),
            Some(Outcome::Stale) => (&self.stale, "stale"),
            None => (&self.invalid, "invalid"),
        };
        Self::bump(counter);
        metrics::counter!(ITEMS_TOTAL, "peer" => peer.to_owned(), "outcome" => label).increment(1);
    }

    /// A call of `peer` the dispatcher refused or never answered.
    fn rpc_error(&self, peer: &str) {
        Self::bump(&self.worker_errors);
        metrics::counter!(RPC_ERRORS_TOTAL, "peer" => peer.to_owned()).increment(1);
    }

    /// Items the workers completed.
    pub fn completed(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
            + self.updated.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
    }

    /// What the workers did with the items they leased, in words: `N
    /// completed (a created, b updated, c duplicates); d stale and e
    /// invalid failed without requeue`.
    pub fn outcomes(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} completed ({} created, {} updated, {} duplicates); {} stale and {} invalid failed without requeue",
            self.completed(),
            load(&self.created),
            load(&self.updated),
            load(&self.duplicates),
            load(&self.stale),
            load(&self.invalid),
        )
    }
}

/// The seeder: every `interval` one operation enqueued, until `stop`.
pub async fn run_seeder(
    client: RpcClient,
    mut seeder: Seeder,
    interval: Duration,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let op = seeder.next_operation();
        match client.enqueue(&op.payload()).await {
            Ok(response) => {
                counters.enqueue(true);
                tracing::debug!(
                    resource = %op.resource_id,
                    operation = op.operation_type.name(),
                    pending = %response["stats"]["pendingCount"],
                    "enqueued"
                );
            }
            Err(error) => {
                counters.enqueue(false);
                tracing::warn!(%error, "the seeder could not enqueue");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A worker: leases as `peer`, works 400–1250 ms, applies the operation
/// to `catalog` and completes it (a duplicate too), or fails it without
/// requeue when it is stale or not an operation. It never heartbeats (the
/// reference's final worker did not). After `stop` it finishes the item
/// it holds and leases no more.
pub async fn run_worker(
    client: RpcClient,
    peer: String,
    catalog: Arc<std::sync::Mutex<Catalog>>,
    counters: Arc<Counters>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::new();
    while !*stop.borrow() {
        let lease = match client.lease(&peer, Duration::from_secs(2)).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(error) => {
                counters.rpc_error(&peer);
                tracing::warn!(%error, peer, "lease failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let token = lease.token().clone();
        let op = match Operation::from_payload(&lease.response["payload"]) {
            Ok(op) => op,
            Err(why) => {
                tracing::warn!(why, peer, "invalid catalog payload");
                counters.item(&peer, None);
                if let Err(error) = client.fail(&token, false, "invalid catalog payload").await {
                    counters.rpc_error(&peer);
                    tracing::warn!(%error, peer, "fail refused");
                }
                continue;
            }
        };
        tokio::time::sleep(Duration::from_millis(rng.u64(400..1250))).await;
        let outcome = crate::hosts::lock(&catalog).apply(&op);
        counters.item(&peer, Some(outcome));
        let result = match outcome {
            Outcome::Stale => client.fail(&token, false, "stale catalog version").await,
            Outcome::Duplicate | Outcome::Created | Outcome::Updated => {
                match client.complete(&token).await {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        tracing::warn!(%error, peer, "complete refused; requeueing");
                        client.fail(&token, true, "worker exception").await
                    }
                }
            }
        };
        if let Err(error) = result {
            counters.rpc_error(&peer);
            tracing::warn!(%error, peer, resource = %op.resource_id, "the dispatcher refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(table: &str, version: i32) -> Operation {
        let mut seeder = Seeder::new(fastrand::Rng::with_seed(7));
        let mut op = seeder.next_operation();
        op.table = table.to_owned();
        op.version = version;
        op
    }

    #[tokio::test]
    async fn a_dispatcher_that_is_not_there_is_named_with_why() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = RpcClient::new(&format!("http://127.0.0.1:{port}"), "resourcelease", None);
        let err = client
            .call("enqueue", &serde_json::json!({}), None)
            .await
            .unwrap_err();
        assert_eq!(err.status, 0, "{err}");
        // Not only the client's "client error (Connect)".
        assert!(err.message.contains("Connection refused"), "{err}");
    }

    #[test]
    fn the_catalog_creates_updates_and_refuses_stale_versions() {
        let mut catalog = Catalog::default();
        assert_eq!(catalog.apply(&op("t", 1)), Outcome::Created);
        assert_eq!(catalog.apply(&op("t", 3)), Outcome::Updated);
        assert_eq!(catalog.apply(&op("t", 3)), Outcome::Duplicate);
        assert_eq!(catalog.apply(&op("t", 2)), Outcome::Stale);
        assert_eq!(
            catalog.apply(&op("T", 2)),
            Outcome::Stale,
            "keys ignore case"
        );
        let snapshot = catalog.snapshot();
        assert_eq!(snapshot["tables"].as_array().unwrap().len(), 1);
        assert_eq!(snapshot["tables"][0]["version"], 3);
        assert_eq!(
            snapshot["recentOperations"].as_array().unwrap().len(),
            3,
            "stale operations are not recorded"
        );
    }

    #[test]
    fn the_seeder_follows_the_reference_mix() {
        let mut seeder = Seeder::new(fastrand::Rng::with_seed(1));
        let ops: Vec<Operation> = (0..400).map(|_| seeder.next_operation()).collect();
        assert!(
            ops[..5]
                .iter()
                .all(|op| op.operation_type == OperationType::CreateTable && op.version == 1)
        );
        let mut versions = BTreeMap::new();
        for op in &ops {
            let version = versions.entry(op.computed_resource_id()).or_insert(0);
            *version += 1;
            assert_eq!(*version, 1, "every resource id is new: {}", op.resource_id);
            assert!(op.resource_id.ends_with(&format!(".v{:04}", op.version)));
            assert!(CATALOGS.contains(&op.catalog.as_str()));
        }
        let creates = ops
            .iter()
            .filter(|op| op.operation_type == OperationType::CreateTable)
            .count();
        assert!(
            (70..140).contains(&creates),
            "about a quarter after the first five: {creates}"
        );
    }

    #[test]
    fn payloads_carry_the_reference_fields_and_round_trip() {
        let op = Seeder::new(fastrand::Rng::with_seed(3)).next_operation();
        let payload = op.payload();
        assert_eq!(payload["resourceType"], RESOURCE_TYPE);
        assert_eq!(payload["resourceId"], op.computed_resource_id());
        assert_eq!(payload["partitionKey"], op.catalog);
        assert_eq!(payload["payloadEncoding"], "application/json");
        assert_eq!(payload["attributes"]["operation"], "CreateTable");
        assert_eq!(payload["attributes"]["version"], "1");
        assert_eq!(payload["requestId"], op.request_id);
        let back = Operation::from_payload(&payload).unwrap();
        assert_eq!(back, op);
        let body = base64::engine::general_purpose::STANDARD
            .decode(payload["body"].as_str().unwrap())
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["operationType"], "CreateTable");
        assert_eq!(body["resourceId"], op.computed_resource_id());
    }

    #[test]
    fn an_enqueue_request_defaults_as_the_reference_does() {
        let request: EnqueueRequest = serde_json::from_str("{}").unwrap();
        let payload = request.payload();
        assert_eq!(payload["resourceId"], "fabric-lakehouse.sales.ad_hoc.v0001");
        assert_eq!(payload["attributes"]["operation"], "CommitSnapshot");
        let op = Operation::from_payload(&payload).unwrap();
        assert_eq!(op.principal, "cli.enqueue");
        assert_eq!(op.columns, ["id STRING", "payload STRING"]);
        assert_eq!(op.changes, op.columns);

        let request: EnqueueRequest =
            serde_json::from_str(r#"{"table":"t","body":"raw","operation":"Vacuum"}"#).unwrap();
        let payload = request.payload();
        assert_eq!(payload["resourceId"], "fabric-lakehouse.sales.t.manual");
        assert!(payload["attributes"].get("operation").is_none());
        assert!(Operation::from_payload(&payload).is_err());
        assert!(serde_json::from_str::<EnqueueRequest>(r#"{"operation":"Drop"}"#).is_err());
    }
}

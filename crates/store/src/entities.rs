//! Entities shaped like Dataloop's JSON (camelCase field names), so the same structs
//! serialize for the worker's HTTP API, deserialize from Dataloop's REST answers and
//! are stored by the embedded backend.
//!
//! Timestamps are RFC 3339 UTC strings (`2024-05-01T12:00:00.000Z`), as Dataloop sends them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// 24 lowercase hex characters, like Dataloop's (MongoDB ObjectId) ids.
pub type Id = String;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub items_count: u64,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    #[default]
    File,
    Dir,
}

/// What an item holds, as far as training and embedding care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Image,
    Text,
    /// A Dataloop prompt item (JSON pointing at an image item; caption in a free-text annotation).
    Prompt,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: Id,
    pub dataset_id: Id,
    /// Folder, starting with `/` (`/` for the root).
    pub dir: String,
    /// Full path inside the dataset, starting with `/` (`/cats/1.jpg`).
    pub filename: String,
    /// Last path segment of `filename`.
    pub name: String,
    #[serde(rename = "type", default)]
    pub item_type: ItemType,
    #[serde(default)]
    pub hidden: bool,
    /// The caption as the Dataloop SDK reads and writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `metadata.system.{mimetype,size,width,height,tags,description,shebang}` and user keys.
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub annotations_count: u64,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Item {
    fn system(&self) -> Option<&Map<String, Value>> {
        self.metadata.get("system").and_then(Value::as_object)
    }

    pub fn mimetype(&self) -> Option<&str> {
        self.system()?.get("mimetype")?.as_str()
    }

    /// The caption stored on the item itself: top-level `description`, then
    /// `metadata.system.description` (where Dataloop's CLIP trainer reads it from exports).
    /// Empty strings count as no caption.
    pub fn own_caption(&self) -> Option<&str> {
        let top = self.description.as_deref().filter(|s| !s.trim().is_empty());
        top.or_else(|| {
            self.system()?
                .get("description")?
                .as_str()
                .filter(|s| !s.trim().is_empty())
        })
    }

    /// True when `metadata.system.tags.<subset>` is `true` (Dataloop's ML subsets).
    pub fn has_tag(&self, subset: &str) -> bool {
        self.system()
            .and_then(|s| s.get("tags"))
            .and_then(|t| t.get(subset))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn is_prompt(&self) -> bool {
        let by_shebang = self
            .system()
            .and_then(|s| s.get("shebang"))
            .and_then(|s| s.get("dltype"))
            .and_then(Value::as_str)
            == Some("prompt");
        by_shebang
            || self
                .metadata
                .get("dltype")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "prompt")
    }

    pub fn kind(&self) -> ItemKind {
        if self.is_prompt() {
            return ItemKind::Prompt;
        }
        match self.mimetype() {
            Some(m) if m.starts_with("image/") => ItemKind::Image,
            Some(m) if m.starts_with("text/") || m == "application/text" => ItemKind::Text,
            _ => ItemKind::Other,
        }
    }
}

/// A new item: bytes plus what Dataloop stores beside them.
#[derive(Debug, Clone, Default)]
pub struct NewItem {
    /// Path inside the dataset (`/cats/1.jpg` or `cats/1.jpg`); its folder becomes `dir`.
    pub filename: String,
    pub bytes: Vec<u8>,
    /// Guessed from the extension when `None`.
    pub mimetype: Option<String>,
    pub description: Option<String>,
    /// Merged into the stored metadata (`system.mimetype` and `system.size` are set by the store).
    pub metadata: Value,
    pub hidden: bool,
}

/// One page of a DQL query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemPage {
    pub items: Vec<Item>,
    pub total_items_count: u64,
    pub has_next_page: bool,
    /// 0-based page index of this answer.
    pub page: u32,
}

/// A DQL query over the items of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemQuery {
    /// DQL filter; `None` means Dataloop's default (not hidden, type file).
    #[serde(default)]
    pub filter: Option<Value>,
    /// 0-based.
    #[serde(default)]
    pub page: u32,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_page_size() -> u32 {
    1000
}

impl Default for ItemQuery {
    fn default() -> Self {
        Self {
            filter: None,
            page: 0,
            page_size: default_page_size(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    pub id: Id,
    pub item_id: Id,
    pub dataset_id: Id,
    /// `text` for free-text annotations.
    #[serde(rename = "type")]
    pub annotation_type: String,
    /// `free-text` for captions.
    pub label: String,
    /// For free text: the text itself as a JSON string.
    pub coordinates: Value,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub created_at: String,
}

impl Annotation {
    /// The text of a free-text annotation.
    pub fn free_text(&self) -> Option<&str> {
        (self.annotation_type == "text").then(|| self.coordinates.as_str())?
    }
}

#[derive(Debug, Clone, Default)]
pub struct NewAnnotation {
    pub annotation_type: String,
    pub label: String,
    pub coordinates: Value,
    pub metadata: Value,
}

impl NewAnnotation {
    /// A Dataloop free-text annotation holding `text`.
    pub fn free_text(text: impl Into<String>) -> Self {
        Self {
            annotation_type: "text".into(),
            label: "free-text".into(),
            coordinates: Value::String(text.into()),
            metadata: Value::Null,
        }
    }
}

/// Where a caption (and the image it describes) came from, resolved for training.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedCaption {
    /// The item whose bytes are the image: the item itself, or a prompt item's user image
    /// (possibly in another dataset). `None` for text items and prompts without an image.
    pub image_item: Option<Item>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelStatus {
    Created,
    PreTrained,
    Pending,
    Training,
    Trained,
    Deployed,
    Failed,
    Cloning,
}

impl ModelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::PreTrained => "pre-trained",
            Self::Pending => "pending",
            Self::Training => "training",
            Self::Trained => "trained",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Cloning => "cloning",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.into())).ok()
    }

    /// Whether the weights are final: usable as "Newest CLIP model".
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Trained | Self::PreTrained | Self::Deployed)
    }
}

/// One file of a model's native checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Path relative to the checkpoint directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `metadata.system.subsets`: DQL filters choosing the train and validation items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subsets {
    pub train: Value,
    pub validation: Value,
}

impl Subsets {
    /// The template's defaults: not hidden, type file, tagged `train` / `validation`.
    pub fn default_filters() -> Self {
        Self {
            train: default_subset_filter("train"),
            validation: default_subset_filter("validation"),
        }
    }
}

/// `{"$and":[{"hidden":false},{"type":"file"},{"metadata.system.tags.<subset>":true}]}`.
pub fn default_subset_filter(subset: &str) -> Value {
    serde_json::json!({"$and": [
        {"hidden": false},
        {"type": "file"},
        {format!("metadata.system.tags.{subset}"): true}
    ]})
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    pub id: Id,
    pub name: String,
    pub status: ModelStatus,
    #[serde(default)]
    pub configuration: Map<String, Value>,
    #[serde(default)]
    pub dataset_id: Option<Id>,
    /// The model this one was cloned from.
    #[serde(default)]
    pub base_model_id: Option<Id>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// `system.subsets` lives here, as in Dataloop.
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Model {
    pub fn subsets(&self) -> Option<Subsets> {
        let s = self.metadata.get("system")?.get("subsets")?;
        serde_json::from_value(s.clone()).ok()
    }

    pub fn set_subsets(&mut self, subsets: &Subsets) {
        set_path(
            &mut self.metadata,
            &["system", "subsets"],
            serde_json::to_value(subsets).unwrap_or(Value::Null),
        );
    }
}

/// Sets `root.path[0].path[1]...` to `value`, creating objects on the way.
pub fn set_path(root: &mut Value, path: &[&str], value: Value) {
    let mut cur = root;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("just made an object")
            .entry(key.to_string())
            .or_insert(Value::Null);
    }
    *cur = value;
}

/// A model registered from scratch (a base model); artifacts are uploaded afterwards.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub name: String,
    pub status: ModelStatus,
    pub configuration: Map<String, Value>,
    pub dataset_id: Option<Id>,
    pub description: Option<String>,
    pub metadata: Value,
}

impl NewModel {
    /// A model with a name and a status, nothing else set yet (empty configuration and
    /// metadata object, no dataset or description).
    pub fn new(name: impl Into<String>, status: ModelStatus) -> NewModel {
        NewModel {
            name: name.into(),
            status,
            configuration: Map::new(),
            dataset_id: None,
            description: None,
            metadata: Value::Object(Map::new()),
        }
    }
}

/// What the template's *Create New Model* node asks for.
#[derive(Debug, Clone, Default)]
pub struct CloneModel {
    /// `None`: `{base}_{YYYY_MM_DD-THH_MM_SS}` (UTC). A clash gets `_v1` (then `_v2`...).
    pub name: Option<String>,
    /// Top-level keys replace the base configuration's (shallow merge).
    pub configuration: Option<Map<String, Value>>,
    pub dataset_id: Option<Id>,
    /// `None`: [`Subsets::default_filters`].
    pub subsets: Option<Subsets>,
    /// `None`: `created`.
    pub status: Option<ModelStatus>,
    pub description: Option<String>,
}

/// A point on a model's training curves (`figure` `loss`, `legend` `train`/`val`, x = epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSample {
    pub model_id: Id,
    #[serde(default)]
    pub dataset_id: Option<Id>,
    pub figure: String,
    pub legend: String,
    pub data: MetricPoint,
    #[serde(default)]
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    pub id: Id,
    pub name: String,
    /// Nodes, connections and start nodes keep the manifest's shapes (`dataloop.json`).
    #[serde(default)]
    pub nodes: Vec<Value>,
    #[serde(default)]
    pub connections: Vec<Value>,
    #[serde(default)]
    pub start_nodes: Vec<Value>,
    #[serde(default)]
    pub variables: Vec<Variable>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Pipeline {
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    #[serde(default)]
    pub id: Id,
    pub name: String,
    /// The pipeline id.
    #[serde(default)]
    pub reference: Id,
    /// `Model`, `Dataset`, `Json`, `String`, ... For Model/Dataset the value is the entity id.
    #[serde(rename = "type")]
    pub var_type: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPipeline {
    pub name: String,
    #[serde(default)]
    pub nodes: Vec<Value>,
    #[serde(default)]
    pub connections: Vec<Value>,
    #[serde(default)]
    pub start_nodes: Vec<Value>,
    /// `id` and `reference` are assigned by the store.
    #[serde(default)]
    pub variables: Vec<Variable>,
}

/// Set a variable's value (by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariableUpdate {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionStatus {
    Created,
    InProgress,
    Success,
    Failed,
    Aborted,
    Canceled,
    Rerun,
    SystemFailure,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::InProgress => "in-progress",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Canceled => "canceled",
            Self::Rerun => "rerun",
            Self::SystemFailure => "system-failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.into())).ok()
    }

    /// No further progress is accepted once an execution is in one of these.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::Aborted | Self::Canceled | Self::SystemFailure
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub status: ExecutionStatus,
    /// 0..=100.
    pub percent_complete: u32,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub timestamp: String,
}

/// Which pipeline run and node an execution belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionPipeline {
    pub id: Id,
    #[serde(default)]
    pub node_id: Option<String>,
    /// The pipeline execution (run) id.
    #[serde(default)]
    pub execution_id: Option<Id>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub id: Id,
    pub function_name: String,
    #[serde(default)]
    pub service_name: Option<String>,
    /// The FaaS service that runs it (Dataloop's `serviceId`; the embedded store has no
    /// services and keeps the service name here).
    #[serde(default)]
    pub service_id: Option<Id>,
    #[serde(default)]
    pub pipeline: Option<ExecutionPipeline>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    /// Same as `latest_status.status`, kept top-level as Dataloop does.
    pub status: ExecutionStatus,
    pub latest_status: StatusEntry,
    #[serde(default)]
    pub status_log: Vec<StatusEntry>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewExecution {
    pub function_name: String,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub pipeline: Option<ExecutionPipeline>,
    #[serde(default)]
    pub input: Value,
}

/// A progress report; absent fields keep their value. Terminal statuses go through
/// [`crate::Executions::finish_execution`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionProgress {
    #[serde(default)]
    pub status: Option<ExecutionStatus>,
    #[serde(default)]
    pub percent_complete: Option<u32>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub output: Option<Value>,
}

/// Filter for listing executions; `None` fields match everything. Newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionQuery {
    pub status: Option<ExecutionStatus>,
    pub function_name: Option<String>,
    pub pipeline_id: Option<Id>,
    /// Pipeline run id (`pipeline.executionId`).
    pub pipeline_execution_id: Option<Id>,
    /// Only this service's executions (see [`Execution::service_id`]).
    #[serde(default)]
    pub service_id: Option<Id>,
    /// 0: no limit.
    #[serde(default)]
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSet {
    pub id: Id,
    pub name: String,
    /// `embeddings`.
    #[serde(rename = "type")]
    pub set_type: String,
    /// `item`.
    pub entity_type: String,
    /// Vector length.
    pub size: u32,
    #[serde(default)]
    pub model_id: Option<Id>,
    #[serde(default)]
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureVector {
    pub id: Id,
    pub feature_set_id: Id,
    /// The item id.
    pub entity_id: Id,
    pub dataset_id: Id,
    pub value: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewVector {
    pub entity_id: Id,
    pub dataset_id: Id,
    pub value: Vec<f32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertSummary {
    pub inserted: u64,
    pub updated: u64,
}

/// Top-k cosine query; `filter` (DQL over items) needs `dataset_id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NearestQuery {
    pub vector: Vec<f32>,
    pub k: usize,
    #[serde(default)]
    pub dataset_id: Option<Id>,
    #[serde(default)]
    pub filter: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Neighbor {
    pub entity_id: Id,
    pub dataset_id: Id,
    /// Cosine similarity in [-1, 1]; higher is closer.
    pub score: f32,
}

//! Pipelines over a [`KeyValue`] store: the description, written once, and a failure that
//! no step's task records (a refused step). Progress itself is read from the steps' tasks.

use super::index::Index;
use super::layout::{TaskKey, pipeline_failure_key, pipeline_key};
use super::tasks::TaskStore;
use super::{KeyValue, StoreError, get_json, to_json};
use crate::pipeline::progress::{PipelineFailure, PipelineView, step_external_id, view};
use crate::pipeline::spec::PipelineSpec;
use crate::task::TaskStatus;

pub struct PipelineStore<'a> {
    kv: &'a dyn KeyValue,
}

impl<'a> PipelineStore<'a> {
    pub fn new(kv: &'a dyn KeyValue) -> Self {
        Self { kv }
    }

    pub fn spec(&self, id: &str) -> Result<Option<PipelineSpec>, StoreError> {
        get_json(self.kv, &pipeline_key(id))
    }

    pub fn save_spec(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        self.kv.set(&pipeline_key(&spec.id), &to_json(spec))
    }

    /// Lists a pipeline in the index of unfinished pipelines (one `set`).
    pub fn index(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        Index::pipelines(self.kv).add(&pipeline_entry(&spec.id, &spec.generation))
    }

    /// Forgets a pipeline whose first step Kling refused, so creating it again starts
    /// afresh: its description, then its own index entry.
    pub fn forget(&self, spec: &PipelineSpec) -> Result<(), StoreError> {
        self.kv.delete(&pipeline_key(&spec.id))?;
        Index::pipelines(self.kv).remove(&pipeline_entry(&spec.id, &spec.generation))
    }

    pub fn fail(&self, id: &str, failure: &PipelineFailure) -> Result<(), StoreError> {
        self.kv.set(&pipeline_failure_key(id), &to_json(failure))
    }

    /// The pipeline and its steps' tasks, read in order up to the first step that has not
    /// succeeded (the steps after it cannot have started).
    pub fn view(&self, id: &str) -> Result<Option<PipelineView>, StoreError> {
        let Some(spec) = self.spec(id)? else {
            return Ok(None);
        };
        Ok(Some(self.view_of(&spec)?))
    }

    pub fn view_of(&self, spec: &PipelineSpec) -> Result<PipelineView, StoreError> {
        let failure: Option<PipelineFailure> = get_json(self.kv, &pipeline_failure_key(&spec.id))?;
        let tasks = TaskStore::new(self.kv);
        let mut found = Vec::with_capacity(spec.steps.len());
        for step in 0..spec.steps.len() {
            let key = TaskKey::external(&step_external_id(&spec.id, step));
            let task = tasks.find_by_key(&key)?;
            let succeeded = task
                .as_ref()
                .is_some_and(|t| t.status == TaskStatus::Succeed);
            found.push(task);
            if !succeeded {
                break;
            }
        }
        Ok(view(spec, &found, failure))
    }
}

/// A pipeline's entry in the index of unfinished pipelines: `{id}/{generation}`.
pub fn pipeline_entry(id: &str, generation: &str) -> String {
    format!("{id}/{generation}")
}

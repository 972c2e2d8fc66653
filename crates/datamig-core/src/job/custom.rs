//! A source a job implements ([`CustomSource`]): any async enumeration whose
//! position serialises — a directory's files, an API's pages, a Redis `SCAN`,
//! another database's rows. The engine keeps its cursor in each batch's
//! checkpoint (as JSON), so a run over it resumes, reports progress and
//! commits exactly as a run over a table does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StepError;
use crate::db::Row;
use crate::Error;

/// Rows from anywhere, in pages, for a [`super::BatchStep`]. Each batch is one
/// page: the engine asks for the page after the last committed batch's cursor,
/// hands its rows to the step, and commits the step's writes with the page's
/// cursor as the checkpoint. An interrupted run resumes with the page after the
/// last committed one, so the source must give the same rows for the same
/// cursor (a directory listing in name order, an API's stable page tokens).
///
/// [`page`](CustomSource::page) runs before the batch's transaction, at least
/// once per batch (again when the batch is retried or redone after an
/// interruption), like the step's `outside` phase.
///
/// ```
/// use datamig_core::prelude::*;
///
/// /// The numbers 1..=n, five at a time: the cursor is the last one given.
/// struct Numbers(i64);
///
/// impl CustomSource for Numbers {
///     type Cursor = i64;
///     fn key(&self) -> Vec<String> { vec!["n".into()] }
///     async fn page(&self, after: Option<&i64>, limit: usize) -> Result<Page<i64>, StepError> {
///         let from = after.map_or(1, |a| a + 1);
///         let to = (from + i64::try_from(limit).unwrap_or(i64::MAX) - 1).min(self.0);
///         Ok(Page { rows: (from..=to).map(|n| vec![Value::Int(n)]).collect(), cursor: to })
///     }
/// }
///
/// let source = Source::custom(Numbers(100));
/// # let _ = source;
/// ```
pub trait CustomSource: Send + Sync + 'static {
    /// Where the enumeration stands after a page: the checkpoint, stored as
    /// JSON (a file name, a page token, a `SCAN` cursor, a last id).
    type Cursor: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The names of the values that identify a row (the first values of each
    /// row): rejects, messages and the batch's rows name it by them.
    fn key(&self) -> Vec<String>;

    /// The names of each row's other values, after the key's.
    fn columns(&self) -> Vec<String> {
        Vec::new()
    }

    /// Up to `limit` rows (about `--batch`) after `after` (`None`: from the
    /// start), each its key's values then its columns', and the cursor after
    /// the last of them. A page without rows ends the source. A
    /// [`StepError::retry`] is retried after a backoff, within `--max-retries`.
    fn page(
        &self,
        after: Option<&Self::Cursor>,
        limit: usize,
    ) -> impl Future<Output = Result<Page<Self::Cursor>, StepError>> + Send;

    /// How many rows are left after `after`, for the progress total; `None`
    /// (the default) when the source cannot tell.
    fn remaining(&self, _after: Option<&Self::Cursor>) -> impl Future<Output = Option<i64>> + Send {
        async { None }
    }

    /// How long one [`page`](CustomSource::page) may take before it is
    /// abandoned and retried.
    fn page_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// One page of a [`CustomSource`]: its rows and the cursor after the last.
#[derive(Debug, Clone)]
pub struct Page<C> {
    pub rows: Vec<Row>,
    pub cursor: C,
}

/// A [`CustomSource`] as a plan's source ([`super::Source::Custom`]).
#[derive(Clone)]
pub struct AnyCustomSource(pub(crate) Arc<dyn ErasedSource>);

impl std::fmt::Debug for AnyCustomSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomSource")
            .field("key", &self.0.key())
            .field("columns", &self.0.columns())
            .finish()
    }
}

/// A page as the engine keeps it: the cursor as its JSON text.
pub(crate) struct RawPage {
    pub rows: Vec<Row>,
    pub cursor: String,
}

/// A [`CustomSource`] with its cursor type erased to JSON text.
pub(crate) trait ErasedSource: Send + Sync {
    fn key(&self) -> Vec<String>;
    fn columns(&self) -> Vec<String>;
    fn page<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RawPage, Error>>;
    fn remaining<'a>(&'a self, after: Option<&'a str>)
        -> BoxFuture<'a, Result<Option<i64>, Error>>;
    fn page_timeout(&self) -> Duration;
}

/// A stored cursor that no longer reads as the source's type.
fn corrupt<C>(text: &str, e: &serde_json::Error) -> Error {
    Error::CorruptCheckpoint(format!(
        "the run's checkpoint {text} is not a cursor of the job's source ({}: {e}); \
         start over with --restart",
        std::any::type_name::<C>()
    ))
}

impl<S: CustomSource> ErasedSource for S {
    fn key(&self) -> Vec<String> {
        CustomSource::key(self)
    }

    fn columns(&self) -> Vec<String> {
        CustomSource::columns(self)
    }

    fn page<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RawPage, Error>> {
        async move {
            let after: Option<S::Cursor> = match after {
                Some(text) => {
                    Some(serde_json::from_str(text).map_err(|e| corrupt::<S::Cursor>(text, &e))?)
                }
                None => None,
            };
            let page = CustomSource::page(self, after.as_ref(), limit)
                .await
                .map_err(|e| e.0)?;
            let cursor = serde_json::to_string(&page.cursor).map_err(|e| {
                Error::JobFailed(format!(
                    "the source's cursor does not serialise as JSON: {e}"
                ))
            })?;
            Ok(RawPage {
                rows: page.rows,
                cursor,
            })
        }
        .boxed()
    }

    fn remaining<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        async move {
            let after: Option<S::Cursor> = match after {
                Some(text) => {
                    Some(serde_json::from_str(text).map_err(|e| corrupt::<S::Cursor>(text, &e))?)
                }
                None => None,
            };
            Ok(CustomSource::remaining(self, after.as_ref()).await)
        }
        .boxed()
    }

    fn page_timeout(&self) -> Duration {
        CustomSource::page_timeout(self)
    }
}

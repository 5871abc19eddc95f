//! Lists that may be long, read a page at a time (`limit` and `continue`), so neither the API
//! server nor the host builds one response of every object.

use futures::{Stream, TryStreamExt, stream};
use kube::api::{ListParams, ObjectList};

/// Objects per page.
pub const PAGE: u32 = 500;

/// The pages of a list, in order: `fetch` is called with `params` (limited to [`PAGE`]), then
/// with each page's continue token until a page carries none. The first error ends the stream.
pub fn pages<K, F, Fut>(params: ListParams, fetch: F) -> impl Stream<Item = Result<Vec<K>, kube::Error>>
where
    K: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<K>, kube::Error>>,
{
    let start = Some(params.limit(PAGE));
    stream::try_unfold((start, fetch), |(params, mut fetch)| async move {
        let Some(params) = params else { return Ok(None) };
        let page = fetch(params.clone()).await?;
        let next = page.metadata.continue_.filter(|token| !token.is_empty()).map(|token| params.continue_token(&token));
        Ok(Some((page.items, (next, fetch))))
    })
}

/// Every object of a list, read a page at a time ([`pages`]).
pub async fn all<K, F, Fut>(params: ListParams, fetch: F) -> Result<Vec<K>, kube::Error>
where
    K: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<K>, kube::Error>>,
{
    pages(params, fetch).try_concat().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ListMeta;
    use std::sync::{Arc, Mutex};

    fn page(items: Vec<u32>, token: Option<&str>) -> ObjectList<u32> {
        ObjectList {
            types: Default::default(),
            metadata: ListMeta { continue_: token.map(str::to_string), ..ListMeta::default() },
            items,
        }
    }

    #[tokio::test]
    async fn follows_continue_tokens_until_a_page_has_none() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let items = all(ListParams::default().labels("a=b"), move |params: ListParams| {
            seen.lock().unwrap().push((params.limit, params.continue_token.clone(), params.label_selector.clone()));
            async move {
                Ok(match params.continue_token.as_deref() {
                    None => page(vec![1, 2], Some("t1")),
                    Some("t1") => page(vec![3], Some("")),
                    Some(other) => panic!("unexpected token {other}"),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(items, [1, 2, 3]);
        let label = Some("a=b".to_string());
        assert_eq!(*asked.lock().unwrap(), [(Some(PAGE), None, label.clone()), (Some(PAGE), Some("t1".into()), label)]);
    }
}

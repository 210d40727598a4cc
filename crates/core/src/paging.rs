//! Pagination of `List*` calls: opaque page tokens (`base64("v1:" + last key)`), keyset
//! paging by the listing's natural key, and "one more row than asked" to know whether
//! another page exists without ever answering an empty last page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::input::InvalidInput;

const DEFAULT_PAGE: u32 = 100;
/// The most rows one page (or one internal batch) holds.
pub const MAX_PAGE: u32 = 1000;

/// A page request as the API takes it.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub page_size: i32,
    pub page_token: String,
}

/// A validated page request: at most `limit` rows strictly after the key `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageQuery {
    pub limit: u32,
    pub after: Option<String>,
}

impl PageQuery {
    /// How many rows to read: one more than the page holds.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }
}

impl PageRequest {
    pub(crate) fn parse(&self) -> Result<PageQuery, InvalidInput> {
        let limit = match self.page_size {
            n if n < 0 => return Err(InvalidInput::new("page_size", "must not be negative")),
            0 => DEFAULT_PAGE,
            n => (n as u32).min(MAX_PAGE),
        };
        let after = if self.page_token.is_empty() {
            None
        } else {
            let bad = || InvalidInput::new("page_token", "is not a token from a previous page");
            let bytes = URL_SAFE_NO_PAD
                .decode(&self.page_token)
                .map_err(|_| bad())?;
            let s = String::from_utf8(bytes).map_err(|_| bad())?;
            Some(s.strip_prefix("v1:").ok_or_else(bad)?.to_owned())
        };
        Ok(PageQuery { limit, after })
    }
}

/// One page of a listing and the token of the next ("" on the last page).
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// The page from `rows` read with `query.fetch()`: the extra row only says that
    /// another page exists, and `key` names the row the next page starts after.
    pub(crate) fn from_rows(mut rows: Vec<T>, query: &PageQuery, key: impl Fn(&T) -> &str) -> Self {
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => URL_SAFE_NO_PAD.encode(format!("v1:{}", key(last))),
            _ => String::new(),
        };
        Page {
            items: rows,
            next_page_token,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_the_last_page_has_none() {
        let q = PageRequest {
            page_size: 2,
            page_token: String::new(),
        }
        .parse()
        .unwrap();
        let page = Page::from_rows(vec!["a", "b", "c"], &q, |s| s);
        assert_eq!(page.items, ["a", "b"]);
        let next = PageRequest {
            page_size: 2,
            page_token: page.next_page_token,
        }
        .parse()
        .unwrap();
        assert_eq!(next.after.as_deref(), Some("b"));
        let last = Page::from_rows(vec!["c"], &next, |s| s);
        assert_eq!(last.next_page_token, "");
        assert!(
            PageRequest {
                page_size: -1,
                page_token: String::new()
            }
            .parse()
            .is_err()
        );
        assert!(
            PageRequest {
                page_size: 1,
                page_token: "not-ours".into()
            }
            .parse()
            .is_err()
        );
    }
}

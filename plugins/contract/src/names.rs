//! Kubernetes naming rules the host checks before the API server would, so a plugin's mistake
//! is reported against the plugin rather than as an opaque 422 from the cluster — and the SDK
//! checks the same, so an author's native test fails as the host would.

/// A DNS-1123 label: 1–63 lowercase alphanumerics or '-', starting and ending alphanumeric.
/// Plugin names must be labels (they go into label values and metric labels).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: up to 253 characters of dot-separated labels. Most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A condition reason as metav1.Condition validates it: CamelCase-ish, letters first,
/// `[A-Za-z0-9_,:]` inside, not ending in `,` or `:`, at most 1024 characters.
pub fn is_condition_reason(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 1024
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':'))
        && !matches!(b[b.len() - 1], b',' | b':')
}

/// A condition type: a qualified name such as `Ready` or `example.com/Synced`.
pub fn is_condition_type(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("appoperator"));
        assert!(!is_dns_label("App"));
        assert!(!is_dns_label("-x"));
        assert!(is_dns_subdomain("web.v2"));
        assert!(!is_dns_subdomain("web..v2"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn condition_fields() {
        assert!(is_condition_reason("Progressing"));
        assert!(is_condition_reason("Scaled_Up:ok"));
        assert!(!is_condition_reason("not ready"));
        assert!(!is_condition_reason("Ready:"));
        assert!(is_condition_type("Ready"));
        assert!(is_condition_type("example.com/Synced"));
        assert!(!is_condition_type("has space"));
    }
}

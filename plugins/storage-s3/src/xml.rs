//! Just enough XML for S3's answers: the text of named elements (`ListBucketResult`,
//! `InitiateMultipartUploadResult`, `Error`, `ListMultipartUploadsResult`), with entity and
//! character references unescaped. S3's documents are flat and namespace-free in the parts
//! read here, so elements are found by name; nested elements of the same name do not occur.

/// The inner text (raw, still escaped) of every `<name>…</name>` in `xml`, in order. `<name/>`
/// yields an empty string.
pub fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after_name = &rest[start + open.len()..];
        // `<Key>` must not match `<KeyCount>`.
        let boundary = after_name.chars().next();
        if !matches!(boundary, Some('>' | '/' | ' ' | '\t' | '\r' | '\n')) {
            rest = after_name;
            continue;
        }
        let Some(tag_end) = after_name.find('>') else { break };
        if after_name[..tag_end].ends_with('/') {
            found.push("");
            rest = &after_name[tag_end + 1..];
            continue;
        }
        let content = &after_name[tag_end + 1..];
        let Some(end) = content.find(&close) else { break };
        found.push(&content[..end]);
        rest = &content[end + close.len()..];
    }
    found
}

/// The unescaped text of the first `<name>` in `xml`.
pub fn first_text(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|raw| unescape(raw))
}

/// Replaces the five predefined entities and numeric character references; `<![CDATA[…]]>`
/// sections are taken literally. Unknown or malformed references are kept as they are.
pub fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    loop {
        let next_amp = rest.find('&');
        let next_cdata = rest.find("<![CDATA[");
        match (next_amp, next_cdata) {
            (_, Some(cdata)) if next_amp.is_none_or(|amp| cdata < amp) => {
                out.push_str(&rest[..cdata]);
                let inner = &rest[cdata + 9..];
                match inner.find("]]>") {
                    Some(end) => {
                        out.push_str(&inner[..end]);
                        rest = &inner[end + 3..];
                    }
                    None => {
                        out.push_str(&rest[cdata..]);
                        return out;
                    }
                }
            }
            (Some(amp), _) => {
                out.push_str(&rest[..amp]);
                let candidate = &rest[amp..];
                match candidate.find(';').and_then(|semi| decode_reference(&candidate[1..semi]).map(|c| (c, semi))) {
                    Some((character, semi)) => {
                        out.push(character);
                        rest = &candidate[semi + 1..];
                    }
                    None => {
                        out.push('&');
                        rest = &candidate[1..];
                    }
                }
            }
            (None, _) => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

fn decode_reference(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                u32::from_str_radix(hex, 16).ok()?
            } else {
                name.strip_prefix('#')?.parse().ok()?
            };
            char::from_u32(code)
        }
    }
}

/// Escapes text for an element's content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_elements_by_exact_name() {
        let xml = r#"<?xml version="1.0"?><R xmlns="x"><KeyCount>2</KeyCount><Contents><Key>a</Key></Contents><Contents><Key>b&amp;c</Key></Contents><Empty/><Empty></Empty></R>"#;
        assert_eq!(elements(xml, "Key"), vec!["a", "b&amp;c"]);
        assert_eq!(elements(xml, "KeyCount"), vec!["2"]);
        assert_eq!(elements(xml, "Contents").len(), 2);
        assert_eq!(elements(xml, "Empty"), vec!["", ""]);
        assert_eq!(elements(xml, "R").len(), 1);
        assert_eq!(first_text(xml, "Missing"), None);
        assert_eq!(elements("<Key>unterminated", "Key"), Vec::<&str>::new());
    }

    #[test]
    fn unescapes_entities_and_references() {
        assert_eq!(unescape("a&lt;b&gt;c&amp;d&quot;e&apos;f"), "a<b>c&d\"e'f");
        assert_eq!(unescape("&#65;&#x42;&#X43;"), "ABC");
        assert_eq!(unescape("fish &chips; & more"), "fish &chips; & more");
        assert_eq!(unescape("<![CDATA[a&amp;<b>]]>&amp;"), "a&amp;<b>&");
        assert_eq!(unescape(&escape("<k&'\">")), "<k&'\">");
    }
}

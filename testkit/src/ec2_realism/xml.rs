//! Just enough XML for the layer: the top-level `<item>`s of a set in an EC2 answer (to drop
//! or edit them) and the text of an element.

/// The byte ranges of the `<item>` elements directly inside the first `<set>` element.
pub fn items(xml: &str, set: &str) -> Vec<(usize, usize)> {
    let open = format!("<{set}>");
    let Some(start) = xml.find(&open) else { return Vec::new() };
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut at = start + open.len();
    let mut item_start = 0;
    let close_set = format!("</{set}>");
    while at < xml.len() {
        let rest = &xml[at..];
        if rest.starts_with(&close_set) && depth == 0 {
            break;
        }
        if rest.starts_with("<item>") {
            if depth == 0 {
                item_start = at;
            }
            depth += 1;
            at += "<item>".len();
        } else if rest.starts_with("</item>") {
            depth = depth.saturating_sub(1);
            at += "</item>".len();
            if depth == 0 {
                out.push((item_start, at));
            }
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The text of the first `<name>` element.
pub fn text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let from = xml.find(&open)? + open.len();
    let to = xml[from..].find(&format!("</{name}>"))? + from;
    Some(&xml[from..to])
}

/// Every text of `<name>` elements.
pub fn texts<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let from = i + open.len();
        let Some(len) = rest[from..].find(&close) else { break };
        out.push(&rest[from..from + len]);
        rest = &rest[from + len..];
    }
    out
}

/// `xml` with each item of `set` passed through `edit` (`None` drops it).
pub fn edit_items(xml: &str, set: &str, mut edit: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut last = 0;
    for (from, to) in items(xml, set) {
        out.push_str(&xml[last..from]);
        if let Some(item) = edit(&xml[from..to]) {
            out.push_str(&item);
        }
        last = to;
    }
    out.push_str(&xml[last..]);
    out
}

/// An EC2 error answer.
pub fn error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>realism</RequestID></Response>"
    )
}

/// EC2's answer to a `CopyImage` that made `image`.
pub fn copy_image_answer(image: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyImageResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>opsfleet-realism</requestId><imageId>{image}</imageId></CopyImageResponse>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOTS: &str = "<R><snapshotSet><item><snapshotId>snap-1</snapshotId><tagSet><item><key>a</key></item>\
        </tagSet><status>completed</status></item><item><snapshotId>snap-2</snapshotId></item></snapshotSet></R>";

    #[test]
    fn finds_only_top_level_items() {
        let found = items(SNAPSHOTS, "snapshotSet");
        assert_eq!(found.len(), 2);
        assert_eq!(text(&SNAPSHOTS[found[1].0..found[1].1], "snapshotId"), Some("snap-2"));
    }

    #[test]
    fn drops_and_edits_items() {
        let out = edit_items(SNAPSHOTS, "snapshotSet", |item| {
            (text(item, "snapshotId") != Some("snap-2")).then(|| item.replace("completed", "pending"))
        });
        assert!(out.contains("<status>pending</status>") && !out.contains("snap-2"), "{out}");
        assert_eq!(texts(SNAPSHOTS, "snapshotId"), vec!["snap-1", "snap-2"]);
    }
}

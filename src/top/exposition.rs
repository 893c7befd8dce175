//! A parser for the Prometheus text exposition format, version 0.0.4.
//!
//! `top --from` reads pages served by our daemon but also by whatever sits
//! in front of it or scrapes it on its behalf, so this follows the format
//! rather than what our own renderer happens to write. Pages come from the
//! network: every malformed line is an error naming its line, never a panic.

/// One sample line: metric name, labels in the order written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name as written, `_total`/`_bucket`/`_sum`/`_count`
    /// suffixes included.
    pub name: String,
    /// Label names and unescaped values, in the order written.
    pub labels: Vec<(String, String)>,
    /// The value; `NaN` and the infinities included.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A line of a page that is not valid exposition text.
///
/// Every variant carries the 1-based line number, so a message points at
/// the offending line of a page fetched from somewhere else.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// The line does not start with a metric name, or the name holds a
    /// character names cannot hold.
    #[error("line {line}: bad metric name at {found:?}")]
    BadMetricName {
        /// 1-based line number.
        line: usize,
        /// The start of the text where the name should be.
        found: String,
    },
    /// A label name is missing or holds a character names cannot hold.
    #[error("line {line}: bad label name at {found:?}")]
    BadLabelName {
        /// 1-based line number.
        line: usize,
        /// The start of the text where the name should be.
        found: String,
    },
    /// A label name is not followed by `=`.
    #[error("line {line}: expected '=' after label name {label}")]
    MissingEquals {
        /// 1-based line number.
        line: usize,
        /// The label name.
        label: String,
    },
    /// A label value does not start with a double quote.
    #[error("line {line}: the value of label {label} is not in double quotes")]
    UnquotedLabelValue {
        /// 1-based line number.
        line: usize,
        /// The label name.
        label: String,
    },
    /// A label value has a backslash escape other than `\\`, `\"` and `\n`.
    #[error("line {line}: unknown escape \\{escape} in a label value")]
    UnknownEscape {
        /// 1-based line number.
        line: usize,
        /// The character after the backslash.
        escape: char,
    },
    /// The line ends inside a label value.
    #[error("line {line}: unterminated label value")]
    UnterminatedLabelValue {
        /// 1-based line number.
        line: usize,
    },
    /// A label value is followed by something other than `,` or `}`.
    #[error("line {line}: expected ',' or '}}' after the value of label {label}")]
    MissingLabelSeparator {
        /// 1-based line number.
        line: usize,
        /// The label whose value was just read.
        label: String,
    },
    /// The line ends before the `}` closing the label set.
    #[error("line {line}: unterminated label set")]
    UnterminatedLabelSet {
        /// 1-based line number.
        line: usize,
    },
    /// A label name appears twice in one label set.
    #[error("line {line}: label {label} given twice")]
    DuplicateLabel {
        /// 1-based line number.
        line: usize,
        /// The repeated label name.
        label: String,
    },
    /// The line ends after the metric name and labels.
    #[error("line {line}: missing value")]
    MissingValue {
        /// 1-based line number.
        line: usize,
    },
    /// The value is not a float.
    #[error("line {line}: bad value {value:?}")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// The value as written.
        value: String,
    },
    /// The text after the value is not an integer timestamp.
    #[error("line {line}: bad timestamp {timestamp:?} after the value")]
    BadTimestamp {
        /// 1-based line number.
        line: usize,
        /// The timestamp as written.
        timestamp: String,
    },
    /// Something follows the timestamp.
    #[error("line {line}: unexpected {found:?} after the timestamp")]
    TrailingGarbage {
        /// 1-based line number.
        line: usize,
        /// The start of the unexpected text.
        found: String,
    },
}

/// Parses a whole page. Comment lines (# HELP, # TYPE, other #) and blank
/// lines are skipped. Optional timestamp after the value is accepted and
/// ignored.
///
/// Lines may end in `\n` or `\r\n`; blanks and tabs may separate tokens.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    parse_only(text, |_| true)
}

/// Like [`parse`], keeping only the samples whose metric name `keep`
/// accepts; the others are skipped before their labels are read, so a
/// huge page of series nobody shows costs no memory per line.
pub fn parse_only(text: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let mut rest = raw.strip_suffix('\r').unwrap_or(raw);
        skip_blanks(&mut rest);
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let name_end = rest
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(rest.len());
        if !keep(&rest[..name_end]) {
            continue;
        }
        samples.push(parse_sample(rest, line)?);
    }
    Ok(samples)
}

/// Parses one sample line, leading blanks already skipped.
fn parse_sample(text: &str, line: usize) -> Result<Sample, ParseError> {
    let mut rest = text;
    let name = take_while(&mut rest, is_metric_name_char);
    let name_ok = name.chars().next().is_some_and(|c| !c.is_ascii_digit());
    // Checking the character after the name catches `foo-bar 1`, which
    // would otherwise read as name `foo` with the bad value `-bar`.
    let ends_well = rest.is_empty() || rest.starts_with([' ', '\t', '{']);
    if !name_ok || !ends_well {
        return Err(ParseError::BadMetricName {
            line,
            found: snippet(text),
        });
    }
    skip_blanks(&mut rest);
    let labels = if eat(&mut rest, '{') {
        parse_labels(&mut rest, line)?
    } else {
        Vec::new()
    };

    skip_blanks(&mut rest);
    let value = take_while(&mut rest, |c| !is_blank(c));
    if value.is_empty() {
        return Err(ParseError::MissingValue { line });
    }
    let value = parse_value(value).ok_or_else(|| ParseError::BadValue {
        line,
        value: value.to_string(),
    })?;

    skip_blanks(&mut rest);
    let timestamp = take_while(&mut rest, |c| !is_blank(c));
    // Version 0.0.4 timestamps are integer milliseconds; a float here is
    // more likely a second value glued to the line than a timestamp.
    if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
        return Err(ParseError::BadTimestamp {
            line,
            timestamp: timestamp.to_string(),
        });
    }
    skip_blanks(&mut rest);
    if !rest.is_empty() {
        return Err(ParseError::TrailingGarbage {
            line,
            found: snippet(rest),
        });
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses a label set after its `{`, up to and including its `}`.
fn parse_labels(rest: &mut &str, line: usize) -> Result<Vec<(String, String)>, ParseError> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        skip_blanks(rest);
        // Reached first, or right after a `,`: both `{}` and a trailing
        // comma are valid.
        if eat(rest, '}') {
            return Ok(labels);
        }
        if rest.is_empty() {
            return Err(ParseError::UnterminatedLabelSet { line });
        }
        let at_name = *rest;
        let name = take_while(rest, is_label_name_char);
        let name_ok = name.chars().next().is_some_and(|c| !c.is_ascii_digit());
        let ends_well = rest.is_empty() || rest.starts_with([' ', '\t', '=', ',', '}']);
        if !name_ok || !ends_well {
            return Err(ParseError::BadLabelName {
                line,
                found: snippet(at_name),
            });
        }
        skip_blanks(rest);
        if rest.is_empty() {
            return Err(ParseError::UnterminatedLabelSet { line });
        }
        if !eat(rest, '=') {
            return Err(ParseError::MissingEquals {
                line,
                label: name.to_string(),
            });
        }
        skip_blanks(rest);
        if rest.is_empty() {
            return Err(ParseError::UnterminatedLabelSet { line });
        }
        if !eat(rest, '"') {
            return Err(ParseError::UnquotedLabelValue {
                line,
                label: name.to_string(),
            });
        }
        let value = parse_label_value(rest, line)?;
        if labels.iter().any(|(label, _)| label == name) {
            return Err(ParseError::DuplicateLabel {
                line,
                label: name.to_string(),
            });
        }
        labels.push((name.to_string(), value));

        skip_blanks(rest);
        if eat(rest, ',') {
            continue;
        }
        if eat(rest, '}') {
            return Ok(labels);
        }
        if rest.is_empty() {
            return Err(ParseError::UnterminatedLabelSet { line });
        }
        return Err(ParseError::MissingLabelSeparator {
            line,
            label: name.to_string(),
        });
    }
}

/// Reads a label value after its opening quote, up to and including the
/// closing quote, undoing the escapes.
fn parse_label_value(rest: &mut &str, line: usize) -> Result<String, ParseError> {
    let text = *rest;
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                *rest = text.get(at + 1..).unwrap_or("");
                return Ok(value);
            }
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, escape)) => return Err(ParseError::UnknownEscape { line, escape }),
                None => return Err(ParseError::UnterminatedLabelValue { line }),
            },
            other => value.push(other),
        }
    }
    Err(ParseError::UnterminatedLabelValue { line })
}

/// Parses a sample value the way Go's `strconv.ParseFloat` does for the
/// forms exporters write: decimals, exponents, `NaN`, `Inf` with or
/// without a sign.
fn parse_value(text: &str) -> Option<f64> {
    // Rust accepts the spellings Go writes (`NaN`, `+Inf`, `-Inf`) and
    // their case variants; nothing else in the format needs translating.
    text.parse::<f64>().ok()
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn skip_blanks(rest: &mut &str) {
    *rest = rest.trim_start_matches([' ', '\t']);
}

/// Consumes `c` if `rest` starts with it.
fn eat(rest: &mut &str, c: char) -> bool {
    match rest.strip_prefix(c) {
        Some(tail) => {
            *rest = tail;
            true
        }
        None => false,
    }
}

/// Splits off the longest prefix whose characters all satisfy `keep`.
fn take_while<'a>(rest: &mut &'a str, keep: impl Fn(char) -> bool) -> &'a str {
    let text: &'a str = rest;
    let end = text.find(|c: char| !keep(c)).unwrap_or(text.len());
    // `find` yields a char boundary, so the fallback is never taken; it
    // only spares a panicking slice.
    let (head, tail) = text.split_at_checked(end).unwrap_or((text, ""));
    *rest = tail;
    head
}

/// The start of `text`, short enough for an error message.
fn snippet(text: &str) -> String {
    const MAX_CHARS: usize = 24;
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP sockdiag_accept_queue_length Connections waiting in a listener's accept queue.
# TYPE sockdiag_accept_queue_length gauge
sockdiag_accept_queue_length{netns=\"host\",family=\"inet6\",address=\"[::]:443\",process=\"nginx: worker \\\"a\\\"\"} 17
sockdiag_accept_queue_length{netns=\"pod/ns/web-0\",family=\"inet\",address=\"0.0.0.0:8080\",process=\"java\"} 0
# HELP sockdiag_collector_duration_seconds Time spent in one collector pass.
# TYPE sockdiag_collector_duration_seconds histogram
sockdiag_collector_duration_seconds_bucket{collector=\"listeners\",le=\"0.005\"} 120
sockdiag_collector_duration_seconds_bucket{collector=\"listeners\",le=\"+Inf\"} 124
sockdiag_collector_duration_seconds_sum{collector=\"listeners\"} 1.5e-01
sockdiag_collector_duration_seconds_count{collector=\"listeners\"} 124
# TYPE sockdiag_netns_last_sample_timestamp_seconds gauge
sockdiag_netns_last_sample_timestamp_seconds{netns=\"host\"} 1.7e+09 1712345678901
sockdiag_build_info{version=\"0.1.0\",note=\"a,b=c} d\\nüñí\"} 1
sockdiag_somaxconn 4096
";

    fn one(line: &str) -> Sample {
        let mut samples = parse(line).unwrap();
        assert_eq!(samples.len(), 1, "{line}");
        samples.pop().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_a_realistic_page() {
        let samples = parse(PAGE).unwrap();
        assert_eq!(samples.len(), 9);
        let first = &samples[0];
        assert_eq!(first.name, "sockdiag_accept_queue_length");
        assert_eq!(first.value, 17.0);
        assert_eq!(first.label("address"), Some("[::]:443"));
        assert_eq!(first.label("process"), Some("nginx: worker \"a\""));
        assert_eq!(first.label("missing"), None);
        assert_eq!(
            first
                .labels
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["netns", "family", "address", "process"]
        );
        assert_eq!(samples[3].value, 124.0);
        assert_eq!(samples[3].label("le"), Some("+Inf"));
        assert_eq!(samples[4].value, 0.15);
        assert_eq!(samples[6].value, 1.7e9);
        assert_eq!(samples[7].label("note"), Some("a,b=c} d\nüñí"));
        assert_eq!(samples[8].name, "sockdiag_somaxconn");
        assert!(samples[8].labels.is_empty());
    }

    #[test]
    fn label_value_escapes() {
        let s = one(r#"m{a="x\\y",b="say \"hi\"",c="one\ntwo",d="\\n"} 1"#);
        assert_eq!(s.label("a"), Some("x\\y"));
        assert_eq!(s.label("b"), Some("say \"hi\""));
        assert_eq!(s.label("c"), Some("one\ntwo"));
        assert_eq!(s.label("d"), Some("\\n"));
    }

    #[test]
    fn label_values_with_separators_spaces_and_utf8() {
        let s = one(r#"m{a="}",b=",",c="=",d="  spaced  ",e="日本語 ✓",f=""} 2"#);
        assert_eq!(
            s.labels,
            labels(&[
                ("a", "}"),
                ("b", ","),
                ("c", "="),
                ("d", "  spaced  "),
                ("e", "日本語 ✓"),
                ("f", ""),
            ])
        );
    }

    #[test]
    fn trailing_comma_and_empty_label_set() {
        assert_eq!(one(r#"m{a="b",} 1"#).labels, labels(&[("a", "b")]));
        assert_eq!(one(r#"m{a="b", } 1"#).labels, labels(&[("a", "b")]));
        let empty = one("m{} 3");
        assert_eq!(empty.name, "m");
        assert!(empty.labels.is_empty());
        assert_eq!(empty.value, 3.0);
        assert!(one("m{}3").labels.is_empty());
    }

    #[test]
    fn whitespace_between_tokens() {
        let s = one("  \tm_x:y { a = \"b\" ,\tc=\"d\" , }\t 4   123  \t");
        assert_eq!(s.name, "m_x:y");
        assert_eq!(s.labels, labels(&[("a", "b"), ("c", "d")]));
        assert_eq!(s.value, 4.0);
        assert_eq!(one("m    5").value, 5.0);
    }

    #[test]
    fn special_and_exponent_values() {
        assert!(one("m NaN").value.is_nan());
        assert_eq!(one("m +Inf").value, f64::INFINITY);
        assert_eq!(one("m Inf").value, f64::INFINITY);
        assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("m 1.5e+06").value, 1.5e6);
        assert_eq!(one("m 2E-3").value, 0.002);
        assert_eq!(one("m -0.25").value, -0.25);
        assert_eq!(one("m 12345678901234567890").value, 1.2345678901234567e19);
    }

    #[test]
    fn timestamps_are_accepted_and_ignored() {
        assert_eq!(one("m 7 1712345678901").value, 7.0);
        assert_eq!(one("m 7 -1").value, 7.0);
        assert_eq!(one("m{a=\"b\"} 7 0 ").value, 7.0);
    }

    #[test]
    fn crlf_comments_and_blank_lines() {
        let text = "# HELP m help\r\n# TYPE m counter\r\n\r\n   \r\nm{a=\"b\"} 1\r\n#\r\n# any comment\r\nn 2\r\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].label("a"), Some("b"));
        assert_eq!(samples[1].name, "n");
        assert_eq!(samples[1].value, 2.0);
        assert_eq!(parse("").unwrap(), Vec::new());
        assert_eq!(parse("\n\n# only comments\n").unwrap(), Vec::new());
        // No newline after the last line.
        assert_eq!(parse("a 1\nb 2").unwrap().len(), 2);
    }

    #[test]
    fn missing_value() {
        assert_eq!(parse("m"), Err(ParseError::MissingValue { line: 1 }));
        assert_eq!(parse("m   "), Err(ParseError::MissingValue { line: 1 }));
        assert_eq!(
            parse("a 1\nm{a=\"b\"}\r\n"),
            Err(ParseError::MissingValue { line: 2 })
        );
    }

    #[test]
    fn bad_value() {
        for (text, value) in [
            ("m abc", "abc"),
            ("m 1,5", "1,5"),
            ("m 0x10", "0x10"),
            ("m{a=\"b\"}}", "}"),
            ("m 1_000", "1_000"),
        ] {
            assert_eq!(
                parse(text),
                Err(ParseError::BadValue {
                    line: 1,
                    value: value.to_string()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn unterminated_label_value() {
        for text in [
            r#"m{a="b} 1"#,
            r#"m{a="b"#,
            r#"m{a=""#,
            r#"m{a="b\"} 1"#,
            r#"m{a="b\"#,
        ] {
            assert_eq!(
                parse(text),
                Err(ParseError::UnterminatedLabelValue { line: 1 }),
                "{text}"
            );
        }
    }

    #[test]
    fn unterminated_label_set() {
        for text in [
            "m{",
            "m{ ",
            "m{a",
            "m{a=",
            r#"m{a="b""#,
            r#"m{a="b","#,
            r#"m{a="b" "#,
        ] {
            assert_eq!(
                parse(text),
                Err(ParseError::UnterminatedLabelSet { line: 1 }),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_label_name() {
        for (text, found) in [
            (r#"m{1a="b"} 1"#, r#"1a="b"} 1"#),
            (r#"m{,} 1"#, ",} 1"),
            (r#"m{a="b",,} 1"#, ",} 1"),
            (r#"m{a-b="c"} 1"#, r#"a-b="c"} 1"#),
            (r#"m{a:b="c"} 1"#, r#"a:b="c"} 1"#),
            (r#"m{"a"="b"} 1"#, r#""a"="b"} 1"#),
            (r#"m{é="b"} 1"#, r#"é="b"} 1"#),
        ] {
            assert_eq!(
                parse(text),
                Err(ParseError::BadLabelName {
                    line: 1,
                    found: found.to_string()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn other_label_set_errors() {
        assert_eq!(
            parse(r#"m{a "b"} 1"#),
            Err(ParseError::MissingEquals {
                line: 1,
                label: "a".to_string()
            })
        );
        assert_eq!(
            parse("m{a=b} 1"),
            Err(ParseError::UnquotedLabelValue {
                line: 1,
                label: "a".to_string()
            })
        );
        assert_eq!(
            parse(r#"m{a="b" c="d"} 1"#),
            Err(ParseError::MissingLabelSeparator {
                line: 1,
                label: "a".to_string()
            })
        );
        assert_eq!(
            parse(r#"m{a="b",a="c"} 1"#),
            Err(ParseError::DuplicateLabel {
                line: 1,
                label: "a".to_string()
            })
        );
    }

    #[test]
    fn bad_metric_name() {
        for text in ["1m 1", "{a=\"b\"} 1", "m-x 1", "m.x 1", "é 1", "\"m\" 1"] {
            assert_eq!(
                parse(text),
                Err(ParseError::BadMetricName {
                    line: 1,
                    found: text.to_string()
                }),
                "{text}"
            );
        }
        let long = format!("9{} 1", "x".repeat(40));
        let Err(ParseError::BadMetricName { found, .. }) = parse(&long) else {
            panic!("accepted {long}");
        };
        assert_eq!(found.chars().count(), 25);
        assert!(found.ends_with('…'));
    }

    #[test]
    fn unknown_escape() {
        assert_eq!(
            parse(r#"m{a="\t"} 1"#),
            Err(ParseError::UnknownEscape {
                line: 1,
                escape: 't'
            })
        );
        assert_eq!(
            parse(r#"m{a="\ü"} 1"#),
            Err(ParseError::UnknownEscape {
                line: 1,
                escape: 'ü'
            })
        );
    }

    #[test]
    fn garbage_after_value_or_timestamp() {
        assert_eq!(
            parse("m 1 1.5"),
            Err(ParseError::BadTimestamp {
                line: 1,
                timestamp: "1.5".to_string()
            })
        );
        assert_eq!(
            parse("m 1 now"),
            Err(ParseError::BadTimestamp {
                line: 1,
                timestamp: "now".to_string()
            })
        );
        assert_eq!(
            parse("m 1 123 extra"),
            Err(ParseError::TrailingGarbage {
                line: 1,
                found: "extra".to_string()
            })
        );
        assert_eq!(
            parse("m 1 123 # comment"),
            Err(ParseError::TrailingGarbage {
                line: 1,
                found: "# comment".to_string()
            })
        );
        // A lone `\r` is only tolerated as part of a line ending.
        assert_eq!(
            parse("m 1\r\r\n"),
            Err(ParseError::BadValue {
                line: 1,
                value: "1\r".to_string()
            })
        );
    }

    #[test]
    fn errors_name_the_line() {
        let text = "# TYPE m gauge\nm{a=\"x\"} 1\n\nm{a=\"x} 2\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err, ParseError::UnterminatedLabelValue { line: 4 });
        assert_eq!(err.to_string(), "line 4: unterminated label value");
        assert_eq!(
            ParseError::MissingLabelSeparator {
                line: 2,
                label: "a".into()
            }
            .to_string(),
            "line 2: expected ',' or '}' after the value of label a"
        );
        assert_eq!(
            ParseError::UnknownEscape {
                line: 3,
                escape: 't'
            }
            .to_string(),
            "line 3: unknown escape \\t in a label value"
        );
    }

    #[test]
    fn every_prefix_of_a_page_parses_or_fails_cleanly() {
        for (end, _) in PAGE.char_indices().chain([(PAGE.len(), ' ')]) {
            let prefix = PAGE.get(..end).unwrap();
            let _ = parse(prefix);
        }
    }

    /// A deterministic stream of pseudo-random numbers (Knuth's MMIX LCG),
    /// so a failure reproduces.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    #[test]
    fn random_text_never_panics() {
        // Biased towards the characters the grammar cares about, so the
        // parser reaches deep states rather than failing on the first byte.
        const SPECIAL: &[char] = &[
            '{', '}', '"', '\\', '=', ',', ' ', '\t', '\n', '\r', '#', 'n', 'a', '_', ':', '1',
            '.', 'e', '+', '-', 'I', 'N', 'ü', '✓',
        ];
        let mut rng = Lcg(42);
        for _ in 0..20_000 {
            let len = rng.next() % 40;
            let mut text = String::new();
            for _ in 0..len {
                let pick = rng.next();
                if pick % 2 == 0 {
                    text.push(SPECIAL[(pick as usize / 2) % SPECIAL.len()]);
                } else {
                    text.push(char::from(b' ' + (pick % 95) as u8));
                }
            }
            let _ = parse(&text);
        }
        // Arbitrary bytes, as a server might send, made into text the way
        // a lenient caller would.
        for _ in 0..5_000 {
            let len = rng.next() % 64;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn random_mutations_of_a_page_never_panic() {
        let chars: Vec<char> = PAGE.chars().collect();
        let mut rng = Lcg(7);
        for _ in 0..2_000 {
            let mut mutated = chars.clone();
            for _ in 0..4 {
                let at = rng.next() as usize % mutated.len();
                match rng.next() % 3 {
                    0 => {
                        mutated.remove(at);
                    }
                    1 => mutated.insert(at, ['"', '\\', '{', '}', ',', '='][at % 6]),
                    _ => {
                        let other = (at + 1) % mutated.len();
                        mutated.swap(at, other);
                    }
                }
            }
            let _ = parse(&mutated.into_iter().collect::<String>());
        }
    }
}

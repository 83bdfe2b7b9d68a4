//! Parser tests: the exposition format's corners that real engines hit.

use super::prom::*;

#[test]
fn keeps_colons_in_metric_names() {
    let exp = parse("vllm:num_requests_waiting{model_name=\"m\"} 3\n").unwrap();
    assert_eq!(exp.sum("vllm:num_requests_waiting"), Some(3.0));
    assert_eq!(
        exp.names().collect::<Vec<_>>(),
        ["vllm:num_requests_waiting"]
    );
}

#[test]
fn unescapes_quotes_backslashes_and_newlines_in_label_values() {
    let exp = parse(r#"info{path="C:\\models\\x",note="say \"hi\"\nbye",b="{,}"} 1"#).unwrap();
    let s = &exp.samples("info")[0];
    assert_eq!(s.label("path"), Some(r"C:\models\x"));
    assert_eq!(s.label("note"), Some("say \"hi\"\nbye"));
    assert_eq!(s.label("b"), Some("{,}"));
}

#[test]
fn reads_special_values_and_timestamps() {
    let body = "a NaN\nb +Inf\nc -Inf 1700000000000\nd 1.5e+06\ne -0.25 -5\n";
    let exp = parse(body).unwrap();
    assert!(exp.samples("a")[0].value.is_nan());
    assert_eq!(exp.samples("b")[0].value, f64::INFINITY);
    assert_eq!(exp.samples("c")[0].value, f64::NEG_INFINITY);
    assert_eq!(exp.samples("c")[0].timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(exp.samples("d")[0].value, 1.5e6);
    assert_eq!(exp.samples("e")[0].timestamp_ms, Some(-5));
    assert_eq!(exp.skipped_lines, 0);
}

#[test]
fn sums_finite_values_across_label_sets() {
    let body = "x{m=\"a\"} 2\nx{m=\"b\"} 3\nx{m=\"c\"} NaN\ny NaN\n";
    let exp = parse(body).unwrap();
    assert_eq!(exp.sum("x"), Some(5.0));
    assert_eq!(exp.sum("y"), None);
    assert_eq!(exp.sum("absent"), None);
    assert_eq!(exp.mean("x"), Some(2.5));
    assert_eq!(exp.sum_where("x", "m", "b"), Some(3.0));
}

#[test]
fn records_types_and_ignores_help_text_and_free_comments() {
    let body = "# HELP vllm:x Any \"text\" \\ here\n# TYPE vllm:x histogram\n# just words\n#\nvllm:x_count 1\n";
    let exp = parse(body).unwrap();
    assert_eq!(exp.metric_type("vllm:x"), Some(MetricType::Histogram));
    assert_eq!(exp.skipped_lines, 0);
}

#[test]
fn skips_bad_lines_with_their_numbers_and_keeps_the_good_ones() {
    let body = "good 1\nbad{x=\"unterminated} 2\nalso_good 2\n# TYPE t wibble\nnovalue\n3starts_with_digit 1\ntrail 1 2 3\n";
    let exp = parse(body).unwrap();
    assert_eq!(exp.sum("good"), Some(1.0));
    assert_eq!(exp.sum("also_good"), Some(2.0));
    assert_eq!(exp.skipped_lines, 5);
    let lines: Vec<usize> = exp.line_errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 4, 5, 6, 7]);
    assert!(
        exp.line_errors[1].reason.contains("wibble"),
        "{}",
        exp.line_errors[1]
    );
    assert!(
        exp.line_errors[2].reason.contains("no value"),
        "{}",
        exp.line_errors[2]
    );
}

#[test]
fn refuses_invalid_escapes_and_repeated_labels() {
    let exp = parse("ok 1\na{x=\"\\t\"} 1\nb{x=\"1\",x=\"2\"} 1\n").unwrap();
    assert_eq!(exp.skipped_lines, 2);
    assert!(exp.line_errors[0].reason.contains("invalid escape"));
    assert!(exp.line_errors[1].reason.contains("repeats label `x`"));
}

#[test]
fn accepts_trailing_comma_blanks_and_crlf() {
    let exp = parse("a { x = \"1\" , } 4\r\n\t b 5 \r\n").unwrap();
    assert_eq!(exp.samples("a")[0].label("x"), Some("1"));
    assert_eq!(exp.sum("b"), Some(5.0));
    assert_eq!(exp.skipped_lines, 0);
}

#[test]
fn a_body_with_only_bad_lines_is_an_error_naming_the_first() {
    let err = parse("<html>\n<body>not metrics</body>\n").unwrap_err();
    match err {
        ParseError::NothingParsed { skipped, first } => {
            assert_eq!(skipped, 2);
            assert_eq!(first.line, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_empty_body_is_an_empty_exposition() {
    let exp = parse("").unwrap();
    assert!(exp.is_empty());
}

#[test]
fn refuses_bodies_over_the_limit() {
    let err = parse_limited("a 1\nb 2\n", 4).unwrap_err();
    assert_eq!(err, ParseError::TooLarge { size: 8, limit: 4 });
}

#[test]
fn keeps_only_the_first_errors_but_counts_all() {
    let body = "x\n".repeat(100) + "ok 1\n";
    let exp = parse(&body).unwrap();
    assert_eq!(exp.skipped_lines, 100);
    assert_eq!(exp.line_errors.len(), MAX_REPORTED_ERRORS);
}

#[test]
fn refuses_words_that_rust_alone_would_read_as_numbers() {
    assert_eq!(parse_value("infinity"), None);
    assert_eq!(parse_value("0x10"), None);
    assert_eq!(parse_value("1_000"), None);
    assert_eq!(parse_value("-nan(ind)"), None);
    assert!(parse_value("-NaN").is_some_and(f64::is_nan));
    assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
}

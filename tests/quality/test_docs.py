from html.parser import HTMLParser

from generatect_kedro.quality import docs


def results(suite="metadata", failed=True, table_failed=False, within=True):
    expectations = [
        {"expectation_type": "expect_column_values_to_be_between", "column": "patient_age", "success": not failed,
         "element_count": 10, "unexpected_count": 2 if failed else 0, "unexpected_keys": ["vol-1", "vol-2"] if failed else [],
         "reason_code": "expectation_failed:expect_column_values_to_be_between:patient_age", "level": "volume",
         "raised_exception": False},
        {"expectation_type": "expect_column_to_exist", "column": "a|b", "success": True, "element_count": None,
         "unexpected_count": 0, "unexpected_keys": [], "reason_code": "x", "level": "table", "raised_exception": False},
    ]
    return {"suite": suite, "key": "volume_id", "rows_checked": 10, "rows_failed": 2 if failed else 0,
            "failed_fraction": 0.2 if failed else 0.0, "max_failed_fraction": 0.1, "table_failed": table_failed,
            "success": not failed, "within_threshold": within, "expectations": expectations}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_markdown_has_summary_and_expectation_tables():
    md = docs.render_markdown([results(), results("reports", failed=False)])
    assert md.startswith("# Data quality")
    assert "| metadata | 10 | 2 | 0.200 | 0.100 | pass with quarantined rows |" in md
    assert "| reports | 10 | 0 | 0.000 | 0.100 | pass |" in md
    assert "| `expect_column_values_to_be_between` | patient_age | FAIL | 2 | 10 |" in md
    assert "a\\|b" in md  # pipes escaped
    assert "vol-1" not in md  # row keys stay in the quarantine table


def test_html_is_well_formed_and_escaped():
    page = docs.render_html([results(table_failed=True, within=False)])
    parser = _Collect()
    parser.feed(page)
    assert parser.tags.count("table") == 2 and "h1" in parser.tags
    text = " ".join(parser.text)
    assert "STOP (table-level expectation failed)" in text and "FAIL" in text
    assert "<script" not in page and "vol-1" not in page


def test_summary_and_metrics():
    all_results = [results(), results("manifest", failed=False)]
    summary = docs.summary(all_results, quarantined_items=2)
    assert summary["passed"] is True and summary["quarantined_items"] == 2
    assert summary["suites"]["metadata"]["expectations_failed"] == 1
    assert "unexpected_keys" not in str(summary)
    metrics = docs.metrics(all_results)
    assert metrics["metadata.rows_failed"] == {"value": 2.0, "step": 0}
    assert metrics["manifest.success"]["value"] == 1.0 and metrics["metadata.success"]["value"] == 0.0
    assert docs.summary([results(within=False)])["passed"] is False

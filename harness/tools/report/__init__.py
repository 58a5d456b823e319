"""Reports people read, from plain data (no test framework here): :mod:`.records` (one
record per case and the matrix document), :mod:`.render` (conformance.md/.html),
:mod:`.compare` (verdict changes against a baseline), :mod:`.allure` (environment,
categories, executor, building the HTML)."""
from harness.tools.report.allure import (ALLURE_FAILED, ALLURE_OK, ALLURE_SKIPPED,  # noqa: F401
                                         CATEGORIES, environment_properties, generate_allure,
                                         write_allure_extras, write_executor)
from harness.tools.report.compare import (CHANGE_KINDS, REGRESSION_KINDS, Change,  # noqa: F401
                                          Comparison, change_kind, compare,
                                          render_comparison_md, render_comparison_text)
from harness.tools.report.records import (SCHEMA, VERDICT_MEANING, VERDICTS,  # noqa: F401
                                          case_record, check_lines, counts, default_paths,
                                          describe_checks,
                                          flatten_numbers, host_facts, load_matrix, matrix,
                                          relpath, scenario_summary, summary_line)
from harness.tools.report.render import (facts_line, key_figures, observed_text,  # noqa: F401
                                         render_html, render_markdown, write_matrix)

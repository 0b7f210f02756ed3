from lmforge.data.clean import clean_documents, clean_text


def test_nfkc_full_width():
    assert clean_text("ＡＢＣ１２３") == "ABC123"
    assert clean_text("a\u00a0b\u3000c") == "a b c"


def test_html_tags_and_entities():
    assert clean_text("<p>Hello&nbsp;<b>world</b></p><p>Tom &amp; Jerry</p>") == "Hello world\n\nTom & Jerry"
    assert clean_text('<div class="x">a<br/>b</div><script>var x = 1 < 2;</script><!-- note -->') == "a\nb"
    assert clean_text("&lt;p&gt; is a paragraph tag") == "<p> is a paragraph tag"


def test_prose_and_code_with_angle_brackets_survive():
    for s in ["a < b and c > d", "List<String> names", "if x<y and y>z:", "see ?a=1&para=2"]:
        assert clean_text(s) == s


def test_control_characters_removed_but_newlines_and_tabs_kept():
    assert clean_text("a\x00b\x07c\ufeff\n\td") == "abc\n\td"
    assert clean_text("one\r\ntwo\rthree") == "one\ntwo\nthree"


def test_whitespace_normalisation_keeps_lines_and_indentation():
    assert clean_text("a   b\t\tc   \n\n\n\n\nd  ") == "a b c\n\nd"
    code = "def f(x):\n    return x  \n\n\n\nprint(f(1))"
    assert clean_text(code) == "def f(x):\n    return x\n\nprint(f(1))"
    assert clean_text("\n\n  \n  Title\n") == "  Title"


def test_clean_documents_drops_empty_and_duplicates_in_order():
    docs = ["b", "<p>a</p>", "  ", "a", "b  ", "c"]
    assert clean_documents(docs) == ["b", "a", "c"]
    assert clean_documents(docs, dedup=False) == ["b", "a", "a", "b", "c"]

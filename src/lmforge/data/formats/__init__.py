"""Read labelled task data into plain example dicts, whatever the file format.

``read_examples`` turns one file (two for parallel text) into a list of dicts whose
shape depends only on the task:

=========  ==============================================================================
task       example
=========  ==============================================================================
classify   ``{"text": str, "label": str | None}`` (+ ``"text_pair": str`` when configured)
ner        ``{"tokens": list[str], "tags": list[str] | None}``
qa         ``{"id": str, "question": str, "context": str,
           "answers": [{"text": str, "answer_start": int}, ...]}``
seq2seq    ``{"source": str, "target": str | None}``
chat       ``{"instruction": str, "input": str, "output": str | None}``
=========  ==============================================================================

Formats (``FORMATS``; one module each, registered in :mod:`~lmforge.data.formats.registry`)
and the tasks they serve:

* ``label_text`` (classify) - ``<label> <text>`` per line, split at the first whitespace
  (SST-2 ``stsa.binary.*``, TREC ``COARSE:fine question``; the label is kept whole, take
  ``label.split(":")[0]`` for TREC's 6 coarse classes). UTF-8, falling back to latin-1
  when the file is not valid UTF-8 (TREC has one stray byte), unless ``encoding`` is given.
  Blank lines are skipped.
* ``tsv`` / ``csv`` (classify, seq2seq) - with a header row, cells are found by field
  name; without one, by ``columns``. TSV cells are split on tabs with no quote handling
  (Chinese reviews contain literal ``"``); CSV uses standard quoting. Every row must have
  as many cells as the header (or as the first row).
* ``conll`` (ner) - whitespace-separated columns, token in column 0, tag in
  ``tag_column`` (default: last); a blank line ends a sentence; ``-DOCSTART-`` lines are
  dropped. ``bmes`` (ner) - the same with exactly ``char tag`` per line.
* ``squad`` (qa) - SQuAD v1.1 JSON; one example per question, every answer kept (extra
  answer keys such as DRCD's ``id`` are dropped). Answer offsets are kept as given.
* ``parallel`` (seq2seq) - ``path`` is the source file and ``target_path`` the
  line-aligned target file.
* ``jsonl`` / ``json`` (every task) - one object per line / a JSON array of objects.
* ``alpaca`` (chat) - a JSON array of ``{"instruction", "input", "output"}``; a missing
  ``input`` reads as ``""``.

Field names. A field left as ``None`` is looked up among these names, first match wins:

* classify: text ``text``, ``text_a``, ``sentence``; label ``label``; ``text_pair`` only
  when ``text_pair_field`` is given.
* seq2seq: source ``source``, ``src``, ``dialogue``, ``document``; target ``target``,
  ``tgt``, ``summary`` (so DialogSum JSONL needs no configuration).
* ner (JSON): tokens ``tokens``, ``words`` (or ``text_field``); tags ``tags``,
  ``ner_tags``, ``labels`` (or ``label_field``).
* qa (JSON records): ``id`` (optional), ``question``, ``context``, ``answers``.
* chat: ``instruction``, ``input`` (optional), ``output``.

Header-less TSV/CSV files are read by position: ``columns`` lists the column indices of
the fields in order - classify ``[text, label]`` or ``[text, text_pair, label]``, seq2seq
``[source, target]`` - and defaults to ``[0, 1]`` (``[0, 1, 2]`` with a text pair). That
fits TNEWS (``sentence<TAB>label_desc``) and Tatoeba (``English<TAB>Chinese<TAB>...``).
Leaving the label column out (``columns=[0]``) reads unlabelled text, one per line; this
is also the way to read plain-text prediction input for classification.

With ``require_labels=False`` (prediction input) labels, tags, targets, outputs and
answers may be absent and read as ``None`` (``[]`` for answers); when present they are
still read.

Every problem with a file raises ``DataError`` on one line that names the file (and the
line or record) and says how to fix it; bad arguments raise ``ConfigError``.
"""
from __future__ import annotations

# Importing a format module registers it; this order is the order of FORMATS.
from lmforge.data.formats import label_text, tables, conll, squad, parallel, json_records, alpaca  # noqa: F401, I001
from lmforge.data.formats.options import TASKS, Example, ReadOptions
from lmforge.data.formats.reading import detect_format, read_examples
from lmforge.data.formats.registry import FORMAT_READERS, formats_for, register_format

FORMATS = tuple(FORMAT_READERS)

__all__ = ["FORMATS", "FORMAT_READERS", "TASKS", "Example", "ReadOptions", "detect_format", "formats_for",
           "read_examples", "register_format"]

"""The `echostream` command: every verb's help lists what it can do."""

import pytest

from echostream.cli import PASS_THROUGH, main


@pytest.mark.parametrize("verb", ["prepare", "bench"])
def test_group_help_lists_every_sub_verb(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    subs = [words[1] for words in PASS_THROUGH if words[0] == verb and len(words) == 2]
    assert subs and all(s in out for s in subs), (subs, out)


def test_unknown_sub_verb_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "nope"])
    assert exit_.value.code == 2
    assert "choose from 'synth', 'cvss-c', 'longform', 'asr-lm'" in capsys.readouterr().err

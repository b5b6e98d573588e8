"""Query pipeline (PAPER.md section 1a) and the Shakespeare clean-up."""
import torch

from rlhf_dist.data import QueryStream, left_pad, make_query, spoken_text

STOP = {13, 14}


def test_make_query_drops_first_fragment_and_ends_at_last_stop():
    window = [5, 6, 13, 7, 8, 14, 9, 10, 13, 11, 12]
    # after the first stop: [7 8 14 9 10 13 11 12]; cut to 6 -> [7 8 14 9 10 13]; last stop kept
    assert make_query(window, STOP, query_length=6, min_length=1) == [7, 8, 14, 9, 10, 13]
    # cut to 5 -> [7 8 14 9 10]: ends at its last stop, index 2
    assert make_query(window, STOP, query_length=5, min_length=1) == [7, 8, 14]
    assert make_query(window, STOP, query_length=5, min_length=4) is None      # too short: skipped
    assert make_query([1, 2, 3, 4], STOP, 4, 1) is None                       # no start token: skipped
    assert make_query([1, 13, 2, 3, 4], STOP, 4, 1) is None                   # no end token: skipped


def test_left_pad_and_stream_position():
    t = left_pad([[1, 2], [3, 4, 5]], 4, pad_id=99)
    assert t.tolist() == [[99, 99, 1, 2], [99, 3, 4, 5]]
    stream = QueryStream([[i] for i in range(5)], seed=0)
    first = stream.next_batch(3) + stream.next_batch(3)
    again = QueryStream([[i] for i in range(5)], seed=0)
    assert again.next_batch(6) == first and stream.position == 6
    resumed = QueryStream([[i] for i in range(5)], seed=0, position=3)
    assert resumed.next_batch(3) == first[3:]


def test_spoken_text_strips_markdown_speakers_and_stage_directions():
    md = """# Othello

## ACT I

### SCENE I. Venice. A street.

_Enter RODERIGO and IAGO_

**RODERIGO**  
Tush! never tell me; I take it much unkindly  
That thou, Iago, _Aside_ who hast had my purse.

**IAGO**  
'Sblood, but you will not hear me:
"""
    text = spoken_text(md)
    assert text == ("Tush! never tell me; I take it much unkindly That thou, Iago, who hast had my purse. "
                    "'Sblood, but you will not hear me:")

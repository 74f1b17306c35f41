"""Collapsed interpretations (issue 15, item 5): failing phrasings the NLU maps to one
uninformative interpretation each keep their own state, path and rewrite target."""

import datetime as dt

import pyarrow as pa
import pytest

from raylib.rewrite.mining import MiningParams, mine_local
from raylib.rewrite.sessions import sessionize, turn_states
from raylib.schema import INTERACTIONS

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
FALLBACK = "Unknown|FallbackIntent|"  # what the NLU says for every unsupported phrasing
CITIES = {"paris": 20, "rome": 14, "oslo": 12}  # customers who reformulate each phrasing


def turn(customer, seconds, utterance, interp, status="ok", defect=False):
    domain, intent, slots = interp.split("|")
    return dict(customer_id=customer, device_id="d1", timestamp=T0 + dt.timedelta(seconds=seconds),
                utterance=utterance, domain=domain, intent=intent, slots=slots, skill_id="s",
                status=status, defect=defect)


def weather(city):
    return f"what's the weather in {city}", f"Weather|GetWeatherIntent|City={city}"


def collapsed_traffic() -> pa.Table:
    """Per city: customers say an unsupported phrasing (NLU: FALLBACK, no_match) and then the
    supported one, which works; others say the supported one alone."""
    rows = []
    for city, n in CITIES.items():
        said, meant = weather(city)
        for k in range(n):
            rows += [turn(f"{city}-{k}", 0, f"do i need an umbrella in {city}", FALLBACK, "no_match", defect=True),
                     turn(f"{city}-{k}", 5, said, meant)]
            rows.append(turn(f"{city}-ok-{k}", 0, said, meant))
    return pa.Table.from_pylist(rows, schema=INTERACTIONS)


def targets(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("utterance").to_pylist(), table.column("rewrite").to_pylist()))


def test_each_collapsed_failing_phrasing_gets_its_own_correct_target():
    traffic = collapsed_traffic()
    right = {f"do i need an umbrella in {c}": weather(c)[0] for c in CITIES}

    keyed = mine_local(traffic)  # default: no_match states keyed by the utterance
    assert targets(keyed.candidates) == right and targets(keyed.table) == right

    shared = mine_local(traffic, MiningParams(no_match_states="interpretation"))  # the paper's states
    wrong = targets(shared.candidates)
    assert wrong.keys() == right.keys() and len(set(wrong.values())) == 1  # Eq. 20 through one state
    assert sum(wrong[u] == right[u] for u in right) == 1  # right for the most said one only
    assert targets(shared.table) == {"do i need an umbrella in paris": weather("paris")[0]}


def test_only_no_match_turns_are_keyed_by_their_utterance():
    turns = pa.table({"domain": ["Unknown", "Music", "Music"], "intent": ["FallbackIntent", "Play", "Play"],
                      "slots": ["", "song=x", "song=x"], "status": ["no_match", "error", "ok"]})
    said = pa.array(["kill the fan", "play x", "play x"])
    assert turn_states(turns, said).to_pylist() == ["Unknown|FallbackIntent||kill the fan", "Music|Play|song=x",
                                                    "Music|Play|song=x"]
    assert turn_states(turns, said, "interpretation").to_pylist() == ["Unknown|FallbackIntent|", "Music|Play|song=x",
                                                                      "Music|Play|song=x"]
    with pytest.raises(ValueError, match="no_match_states"):
        sessionize(collapsed_traffic(), no_match_states="text")

"""Writes a fictional town's handbook and short-answer questions about it, for the knowledge-injection
presets (recipes/configs/embedded/document-self.yaml, document-1.5b.yaml): facts no model has seen.

    python recipes/data/handbook/make_handbook.py --seed 0 [--out recipes/data/handbook]

From the seed: a town, its officials (who holds each post, since which year), its places (street, year
founded, a quantity), its festivals (a date) and its fees (an amount), a few hundred facts in all, written
as document.md. Each fact has three differently worded questions with one short gold answer. Facts are
shuffled, then a share of them is held out entirely (heldout-facts.jsonl: one wording each, never trained);
of every other fact two wordings train (train.jsonl) and the third is held out (heldout-wordings.jsonl).
Which of the three is held out rotates from fact to fact. Files list facts in one order, so the first N
rows of train.jsonl (N even) are both training wordings of the first N/2 facts, and the first N/2 rows of
heldout-wordings.jsonl are the held-out wordings of those same facts. Rows: {"prompt", "answer", "fact",
"wording", "kind"}. facts.jsonl lists every fact once, {"fact", "kind", "subject", "answer"}, for the
coverage report of generated questions (distill_trainer/context/coverage.py). The same seed writes the same
bytes; README.md records the command and the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

SUFFIX = " Answer in a few words."
FIRST = (
    "Odalys Ferrin Isolde Caspian Brannoc Wilhelmina Thaddeus Marisol Evander Linnea Osric Perpetua "
    "Lysander Ottilie Corvin Henrike Alaric Seraphine Barnaby Ingrid Leopold Rosalind Emeric Tamsin "
    "Ignatius Delphine Ambrose Clementine Fenwick Philippa Augustin Maelle Cuthbert Ysolde Benedikt "
    "Aurelie Gideon Hesper Lorcan Mirabel Quentin Saoirse Tobiah Verity Wendell Zinnia"
).split()
LAST = (
    "Brackwater Quillfeather Marchbank Oakhurst Pellinore Thistlewood Fairweather Gallowglass Hartigan "
    "Ivesdale Kettleby Lanyard Merriweather Nettlefold Ormsby Pennywhistle Rookwood Saltmarsh Tollemache "
    "Underhay Vantongeren Wexcombe Yarrowby Ashgrove Blackthorn Cobbledick Dunmore Eldridge Fosdyke "
    "Greenhalgh Holloway Inchbald Jessamy Kilbride Loxley Mottram Northcote Peverell Quarrington "
    "Rainsford Stallybrass Trevelyan Upcott Verrall Whitlock"
).split()
ROLES = (
    "harbour master|town clerk|head librarian|fire chief|postmaster|chief constable|bridge warden|"
    "keeper of the archives|market superintendent|town surveyor|chief ferryman|lamplighter general|"
    "master of the mint|head gardener|weights inspector|school governor|coroner|beadle|town crier|"
    "river bailiff|keeper of the clock tower|chief brewer|warden of the commons|harbour pilot|"
    "registrar of births|toll collector|fishmonger-in-chief|master mason|schoolmaster|bell ringer|"
    "curator of the museum|chief forester|keeper of the seals|chimney inspector|town treasurer|"
    "mayor's secretary"
).split("|")
TOWN_PARTS = (("Harrow", "Wick", "Brindle", "Thorn", "Quell", "Marrow"), ("mere", "haven", "stead", "ford"))
PLACE_NAMES = (
    "Saltgate Amberly Cresswell Dunmarrow Eastwold Fennick Glimmerbrook Holloway Ironbridge Juniper "
    "Kestrel Larkspur Millrace Northgate Oldwharf Pikestaff Queensholm Redcliffe Sandpiper Tidewater "
    "Umberlee Vesper Willowmere Yewtree Zephyr Blackpool Copperleaf Drummond Elmstead Foxhollow"
).split()
# kind of place -> (what is counted, the verb that counts it, the range of the number)
PLACE_KINDS = {
    "Library": ("books", "hold", (4000, 40000)),
    "Ferry": ("passengers", "carry", (40, 400)),
    "School": ("pupils", "teach", (60, 900)),
    "Market": ("stalls", "have", (20, 240)),
    "Lighthouse": ("steps", "have", (90, 400)),
    "Bathhouse": ("pools", "have", (2, 12)),
    "Observatory": ("telescopes", "have", (2, 15)),
    "Clinic": ("beds", "have", (6, 80)),
    "Brewery": ("casks", "store", (100, 3000)),
    "Theatre": ("seats", "have", (120, 1400)),
}
STREETS = (
    "Wicker Lane|Cobbler's Row|Tanner Street|Gull Walk|Hopyard Road|Candle Street|Ropewalk|Mill Lane|"
    "Anchor Street|Sheepwash Lane|Beacon Hill|Weavers' Close|Chandlery Row|Old Post Road|Cooper Street|"
    "Netmaker's Lane|Quayside|Bellfounder Street|Granary Row|Pilgrim Way"
).split("|")
EVENTS = (
    "Lantern Festival|Herring Fair|Feast of the Bridges|Kite Day|Oyster Parade|Night of the Bells|"
    "Cider Moot|Regatta of the Two Rivers|Midwinter Market|Lamb Sunday|Mayor's Walk|Festival of Tides|"
    "Chalk Horse Race|Beekeepers' Day|Lamplight Procession|Clockmakers' Fair"
).split("|")
MONTHS = "January February March April May June July August September October November December".split()
FEES = (
    "mooring permit|market stall licence|fishing licence|library card|hawker's badge|bell-tower visit|"
    "ferry season ticket|allotment lease|chimney inspection|town-hall wedding|dog licence|"
    "street-lamp repair|well-water permit|carriage parking pass|museum membership|firewood permit"
).split("|")

WORDINGS = {
    "role": (
        "Who is the {role} of {town}?",
        "Which person serves as {town}'s {role}?",
        "Name the {role} of {town}.",
    ),
    "since": (
        "In what year did {name} take office in {town}?",
        "Since which year has {name} held office in {town}?",
        "When did {name} start in office? Give the year.",
    ),
    "founded": (
        "In what year was {place} founded?",
        "When was {place} established? Give the year.",
        "{Place} dates from which year?",
    ),
    "street": (
        "On which street is {place}?",
        "What street is {place} on?",
        "Where in {town} is {place}? Name the street.",
    ),
    "quantity": (
        "How many {unit} does {place} {verb}?",
        "What is the number of {unit} at {place}?",
        "Give the count of {unit} at {place}.",
    ),
    "event": (
        "On what date is the {event} held?",
        "When does {town} celebrate the {event}?",
        "What is the date of {town}'s {event}?",
    ),
    "fee": (
        "How much does a {fee} cost in {town}?",
        "What is the price of a {fee} in {town}?",
        "What does {town} charge for a {fee}?",
    ),
}


def build_town(seed: int) -> dict:
    """Every entity and number of the handbook, drawn from `seed`."""
    rng = random.Random(seed)
    town = rng.choice(TOWN_PARTS[0]) + rng.choice(TOWN_PARTS[1])
    firsts, lasts = rng.sample(FIRST, len(ROLES)), rng.sample(LAST, len(ROLES))
    people = [
        {"name": f"{first} {last}", "role": role, "since": rng.randint(1961, 2021)}
        for first, last, role in zip(firsts, lasts, ROLES)
    ]
    places = []
    for name, kind in zip(rng.sample(PLACE_NAMES, 30), [k for k in PLACE_KINDS for _ in range(3)]):
        unit, verb, (low, high) = PLACE_KINDS[kind]
        places.append(
            {
                "place": f"the {name} {kind}",
                "street": rng.choice(STREETS),
                "founded": rng.randint(1702, 1968),
                "count": rng.randint(low, high),
                "unit": unit,
                "verb": verb,
            }
        )
    events = [{"event": e, "day": rng.randint(1, 28), "month": rng.choice(MONTHS)} for e in EVENTS]
    fees = [{"fee": fee, "crowns": rng.randint(2, 180)} for fee in FEES]
    return {"town": town, "people": people, "places": places, "events": events, "fees": fees}


def number(value: int) -> str:
    return f"{value:,}"


def third_person(verb: str) -> str:
    """The verb after a singular subject: has, holds, carries, teaches."""
    if verb == "have":
        return "has"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + ("es" if verb.endswith(("ch", "sh", "s", "x")) else "s")


def document(town: dict) -> str:
    name = town["town"]
    lines = [
        f"# The {name} Town Handbook",
        "",
        f"This handbook lists the officials, places, festivals and fees of the town of {name}.",
        "",
        "## Officials",
        "",
    ]
    lines += [f"- {p['name']} has been the {p['role']} since {p['since']}." for p in town["people"]]
    lines += ["", "## Places", ""]
    for p in town["places"]:
        lines.append(
            f"- {p['place'][0].upper() + p['place'][1:]}, on {p['street']}, was founded in {p['founded']} "
            f"and {third_person(p['verb'])} {number(p['count'])} {p['unit']}."
        )
    lines += ["", "## Festivals", ""]
    lines += [f"- The {e['event']} is held on {e['day']} {e['month']}." for e in town["events"]]
    lines += ["", "## Fees", ""]
    lines += [f"- A {f['fee']} costs {f['crowns']} crowns." for f in town["fees"]]
    return "\n".join(lines) + "\n"


def facts(town: dict) -> list[dict]:
    """One entry per fact: its id, kind, subject (what it is about), gold answer and three wordings."""
    name, found = town["town"], []

    def add(kind, key, answer, **values):
        values = {"town": name, **values}
        if "place" in values:
            values["Place"] = values["place"][0].upper() + values["place"][1:]
        questions = [w.format(**values) + SUFFIX for w in WORDINGS[kind]]
        found.append(
            {"fact": f"{kind}:{key}", "kind": kind, "subject": key, "answer": answer, "questions": questions}
        )

    for p in town["people"]:
        add("role", p["role"], p["name"], role=p["role"])
        # the role stays out of these questions: they would give away the "role" fact of the same person
        add("since", p["name"], str(p["since"]), name=p["name"])
    for p in town["places"]:
        add("founded", p["place"], str(p["founded"]), place=p["place"])
        add("street", p["place"], p["street"], place=p["place"])
        add("quantity", p["place"], number(p["count"]), place=p["place"], unit=p["unit"], verb=p["verb"])
    for e in town["events"]:
        add("event", e["event"], f"{e['day']} {e['month']}", event=e["event"])
    for f in town["fees"]:
        add("fee", f["fee"], f"{f['crowns']} crowns", fee=f["fee"])
    return found


def split(all_facts: list[dict], seed: int, heldout_fact_share: float) -> dict[str, list[dict]]:
    """train / heldout-wordings / heldout-facts rows, facts in one shuffled order in every file."""
    order = list(all_facts)
    random.Random(seed + 1).shuffle(order)
    n_heldout = round(len(order) * heldout_fact_share)
    trained, unseen = order[n_heldout:], order[:n_heldout]
    files = {"train": [], "heldout-wordings": [], "heldout-facts": []}

    def row(fact, wording):
        return {
            "prompt": fact["questions"][wording],
            "answer": fact["answer"],
            "fact": fact["fact"],
            "wording": wording,
            "kind": fact["kind"],
        }

    for position, fact in enumerate(trained):
        held = position % len(fact["questions"])
        files["train"] += [row(fact, w) for w in range(len(fact["questions"])) if w != held]
        files["heldout-wordings"].append(row(fact, held))
    for position, fact in enumerate(unseen):
        files["heldout-facts"].append(row(fact, position % len(fact["questions"])))
    return files


def write_handbook(
    out: Path, seed: int = 0, heldout_fact_share: float = 0.25, command_out: str | None = None
) -> dict[str, Path]:
    """Writes document.md, the three question files and README.md into `out`; returns their paths.
    `command_out`: the --out the README's command names (None: the default folder, named by no --out)."""
    town = build_town(seed)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"document.md": document(town)}
    all_facts = facts(town)
    for name, rows in split(all_facts, seed, heldout_fact_share).items():
        texts[f"{name}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    listed = [{key: fact[key] for key in ("fact", "kind", "subject", "answer")} for fact in all_facts]
    texts["facts.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in listed)
    lines = [
        f"# The {town['town']} handbook: fictional facts for knowledge injection",
        "",
        "Written by (the same seed gives the same bytes):",
        "",
        "```bash",
        f"python recipes/data/handbook/make_handbook.py --seed {seed} --heldout_fact_share "
        f"{heldout_fact_share}" + (f" --out {command_out}" if command_out else ""),
        "```",
        "",
        f"{len(all_facts)} facts about an invented town, three question wordings each, one short gold "
        "answer. Every name, date and number is drawn from the seed, so no model has seen them.",
        "",
        "| file | rows | sha256 |",
        "| --- | --- | --- |",
    ]
    for name, text in texts.items():
        rows = text.count("\n") if name.endswith(".jsonl") else "-"
        lines.append(f"| `{name}` | {rows} | `{hashlib.sha256(text.encode()).hexdigest()[:16]}` |")
    lines += [
        "",
        "`train.jsonl`: two wordings of each trained fact; `heldout-wordings.jsonl`: the third wording of "
        "the same facts, in the same fact order; `heldout-facts.jsonl`: one wording of each fact that is "
        "never trained; `facts.jsonl`: every fact once (id, kind, subject, answer), read only by the "
        "coverage report. Read by `recipes/distill_document.py` (`document_file`, `data_file`, "
        "`heldout_wordings_file`, `heldout_facts_file`, `facts_file`).",
        "",
    ]
    texts["README.md"] = "\n".join(lines)
    paths = {}
    for name, text in texts.items():
        paths[name] = out / name
        paths[name].write_text(text, encoding="utf-8")
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout_fact_share", type=float, default=0.25)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)
    if not 0 < args.heldout_fact_share < 1:
        parser.error(f"--heldout_fact_share must be in (0, 1), got {args.heldout_fact_share}")
    default = Path(args.out).resolve() == Path(__file__).resolve().parent
    written = write_handbook(
        Path(args.out), args.seed, args.heldout_fact_share, command_out=None if default else args.out
    )
    for name, path in written.items():
        print(f"{name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

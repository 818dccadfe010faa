import json, datetime
from fractions import Fraction
items = []
def add(cat, prompt, check):
    items.append({"id": f"{cat}-{sum(1 for i in items if i['category']==cat)+1:02d}", "category": cat, "prompt": prompt, "check": check})
def num(v, tol=None):
    c = {"type": "number", "value": v}
    if tol is not None: c["tolerance"] = tol
    return c
def rx(p): return {"type": "regex", "pattern": p}

# arithmetic (25)
for p, v in [
 ("What is 347 + 958?", 347+958), ("Compute 1200 - 387.", 1200-387), ("What is 23 times 47?", 23*47),
 ("Divide 7452 by 12.", 7452/12), ("What is 3^7?", 3**7), ("Work out (14 + 26) * 3.", (14+26)*3),
 ("What is 18% of 350?", 0.18*350), ("How much is 0.75 * 64?", 0.75*64), ("Calculate 1001 - 99 * 3.", 1001-99*3),
 ("What is 56 / 7 + 13?", 56/7+13), ("What's 2 to the power of 12?", 2**12), ("Multiply 125 by 16.", 125*16),
 ("What is 9.5 + 3.25?", 9.5+3.25), ("What is 45 squared?", 45**2), ("Evaluate 100 - (36 / 4).", 100-36/4),
 ("How much is 15 percent of 90?", 0.15*90), ("What do you get if you add 4567 and 3210?", 4567+3210),
 ("What is 81 divided by 9 times 4?", 81/9*4), ("What is 1/4 + 1/2?", 0.75), ("Compute 7 * 8 - 6 * 5.", 7*8-6*5),
 ("What is 999 * 11?", 999*11), ("Subtract 2048 from 5000.", 5000-2048), ("What is 12.5 times 8?", 12.5*8),
 ("What is the sum of 17, 23 and 60?", 17+23+60), ("What is (3 + 5) ^ 2?", 64),
]: add("arithmetic", p, num(v, 0.01))

# units (20)
for p, v, tol in [
 ("How many miles is 42 kilometers?", 42/1.609344, 0.05), ("Convert 100 degrees Fahrenheit to Celsius.", (100-32)*5/9, 0.1),
 ("How many grams are in 3.5 kilograms?", 3500, 0.5), ("Convert 5 feet to centimeters.", 5*30.48, 0.2),
 ("How many pounds is 70 kg?", 70/0.45359237, 0.1), ("Convert 25 degrees Celsius to Fahrenheit.", 77, 0.1),
 ("How many meters are in 2.4 kilometers?", 2400, 0.5), ("How many inches is 50 centimeters?", 50/2.54, 0.05),
 ("Convert 3 hours to minutes.", 180, 0.1), ("How many seconds are in 2.5 minutes?", 150, 0.1),
 ("Convert 10 miles to kilometers.", 16.09344, 0.02), ("How many milliliters are in 1.5 liters?", 1500, 0.5),
 ("Convert 8 ounces to grams.", 8*28.349523125, 0.2), ("How many feet is 3 meters?", 3/0.3048, 0.02),
 ("Convert 0 degrees Fahrenheit to Celsius.", -160/9, 0.1), ("How many kilometers is 5000 meters?", 5, 0.01),
 ("Convert 2 gallons to liters.", 2*3.785411784, 0.02), ("How many centimeters are in 12 inches?", 30.48, 0.05),
 ("Convert 90 minutes to hours.", 1.5, 0.01), ("How many kilograms is 10 pounds?", 4.5359237, 0.02),
]: add("units", p, num(v, tol))

# facts (20)
for p, pat in [
 ("Which city is the capital of Japan?", r"(?i)tokyo"), ("What is the chemical symbol for gold?", r"\bAu\b"),
 ("Which planet is closest to the Sun?", r"(?i)mercury"), ("Name the capital city of Canada.", r"(?i)ottawa"),
 ("How many continents are there?", r"\b7\b|(?i)\bseven\b"), ("What gas do plants absorb from the air?", r"(?i)carbon dioxide|CO2|CO₂"),
 ("Who wrote Romeo and Juliet?", r"(?i)shakespeare"), ("Which ocean lies between Africa and Australia?", r"(?i)indian"),
 ("What is the boiling point of water in Celsius at sea level?", r"\b100\b"), ("What is the capital of Italy?", r"(?i)rome"),
 ("What is the chemical symbol for sodium?", r"\bNa\b"), ("Which planet is known as the Red Planet?", r"(?i)mars"),
 ("Germany's capital is which city?", r"(?i)berlin"), ("How many legs does a spider have?", r"\b8\b|(?i)\beight\b"),
 ("What is the freezing point of water in Fahrenheit?", r"\b32\b"), ("What is the largest planet in the solar system?", r"(?i)jupiter"),
 ("Which language has the most native speakers?", r"(?i)mandarin|chinese"), ("What is the capital of Spain?", r"(?i)madrid"),
 ("How many days are in a leap year?", r"\b366\b"), ("What is H2O commonly called?", r"(?i)water"),
]: add("facts", p, rx(pat))

# json (20)
for p, fields in [
 ("Extract the name and age as JSON: Maria Lopez is 29 years old.", {"name": "Maria Lopez", "age": 29}),
 ("Give me JSON with fields city and population for: Lyon has about 520000 inhabitants.", {"city": "Lyon", "population": 520000}),
 ("Return a JSON object with keys product and price from: The desk lamp costs 35 dollars.", {"product": "desk lamp", "price": 35}),
 ("As JSON with title and year: The film Arrival came out in 2016.", {"title": "Arrival", "year": 2016}),
 ("Extract fields name, email from: Contact Tom Baker at tom.baker@example.com.", {"name": "Tom Baker", "email": "tom.baker@example.com"}),
 ("Turn this into JSON with fields item and quantity: We ordered 12 chairs.", {"item": "chairs", "quantity": 12}),
 ("JSON with keys country and capital for: The capital of Kenya is Nairobi.", {"country": "Kenya", "capital": "Nairobi"}),
 ("Extract the name and the score as JSON: Priya scored 87 points.", {"name": "Priya", "score": 87}),
 ("Give JSON with fields brand and model from: I drive a Toyota Corolla.", {"brand": "Toyota", "model": "Corolla"}),
 ("Make a JSON object with fields author and pages: Dune by Frank Herbert has 412 pages.", {"author": "Frank Herbert", "pages": 412}),
 ("Extract as JSON the fields animal and legs: A horse has 4 legs.", {"animal": "horse", "legs": 4}),
 ("Return JSON with keys language and creator: Python was created by Guido van Rossum.", {"language": "Python", "creator": "Guido van Rossum"}),
 ("Give me a JSON object with name and active (a boolean) for: User sam42 is active.", {"name": "sam42", "active": True}),
 ("JSON with fields temperature and unit from: It is 21 degrees Celsius outside.", {"temperature": 21, "unit": "Celsius"}),
 ("Extract fields city and country as JSON: Porto is a city in Portugal.", {"city": "Porto", "country": "Portugal"}),
 ("As a JSON object with keys team and wins: The Hawks won 15 games.", {"team": "Hawks", "wins": 15}),
 ("Extract JSON with fields name and height_cm: Ana is 168 cm tall.", {"name": "Ana", "height_cm": 168}),
 ("Give JSON with the fields course and credits: Linear Algebra is worth 6 credits.", {"course": "Linear Algebra", "credits": 6}),
 ("Return a JSON object with fields fruit and color for: A ripe banana is yellow.", {"fruit": "banana", "color": "yellow"}),
 ("Extract as JSON the fields company and employees: Acme Corp employs 250 people.", {"company": "Acme Corp", "employees": 250}),
]: add("json", p, {"type": "json", "fields": fields})

# code (20) - expected output computed by running the Python
code_items = [
 ("What does this Python code print?\nprint(3 * 4 + 2)", None),
 ("What does this Python print?\nx = [1, 2, 3]\nprint(sum(x) * 2)", None),
 ("What is the output of this Python code?\nprint(len('hello world'))", None),
 ("What does this print?\nfor i in range(3):\n    print(i * 10)", None),
 ("What does this Python code output?\nprint('ab' * 3)", None),
 ("What will this Python print?\nx = 10\nx += 5\nprint(x // 2)", None),
 ("What does this Python print?\nprint(max([4, 9, 2, 7]))", None),
 ("What is printed?\nwords = ['a', 'bb', 'ccc']\nprint(len(words[2]))", None),
 ("What does this Python code print?\nprint(17 % 5)", None),
 ("What does this print?\nprint(sorted([3, 1, 2]))", None),
 ("What does this JavaScript log?\nconsole.log(2 + 3 * 4);", "14"),
 ("What does this JavaScript print?\nconsole.log('abc'.length * 2);", "6"),
 ("What is logged by this JavaScript?\nlet s = 0; for (let i = 1; i <= 4; i++) { s += i; } console.log(s);", "10"),
 ("What does this JavaScript output?\nconsole.log([1, 2, 3].map(x => x * x).join(','));", "1,4,9"),
 ("What does this JavaScript print?\nconsole.log(Math.max(3, 11, 7));", "11"),
 ("What does this Python print?\nprint('hello'.upper())", None),
 ("What does this Python code print?\nprint(2 ** 10)", None),
 ("What does this Python print?\nd = {'a': 1, 'b': 2}\nprint(d['b'] + 5)", None),
 ("What will this JavaScript log?\nconsole.log(10 / 4);", "2.5"),
 ("What does this Python print?\nprint(round(7 / 2))", None),
]
import io, contextlib, re
for p, js in code_items:
    if js is None:
        src = p.split("\n", 1)[1]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(src, {})
        out = buf.getvalue().strip()
    else:
        out = js
    lines = out.split("\n")
    # Every output line must appear, in order.
    def esc(t):
        e = "".join("\\" + ch if ch in ".+*?()|[]{}^$#&-~\\" else ch for ch in t)
        if t[:1].isalnum(): e = r"\b" + e
        if t[-1:].isalnum(): e = e + r"\b"
        return e
    pat = r"[\s\S]*?".join(esc(l) for l in lines)
    add("code", p, rx(pat))

# summary (15)
passages = [
 ("The city council met on Tuesday to discuss the new bike lanes. After a long debate, members voted seven to two to build protected lanes on Main Street next spring. Shop owners worried about parking, but cyclists welcomed the plan.", ["bike", "Main Street"]),
 ("Researchers at a university in Norway have found that bees can recognise human faces. In experiments, bees learned to link photos of faces with sugar water and later picked the same faces out of groups, even without a reward.", ["bees", "faces"]),
 ("The bakery on Elm Road will close for three weeks in August while its ovens are replaced. The owners say the new ovens will use less energy and let them bake bread earlier in the morning. Online orders will continue during the closure.", ["bakery", "ovens"]),
 ("A storm brought heavy rain and strong winds to the coast on Sunday night. Several roads were flooded and thousands of homes lost power for a few hours. Nobody was hurt, and repair crews had restored electricity by Monday afternoon.", ["storm", "power"]),
 ("The library has launched a program that lends tools instead of books. Members can borrow drills, ladders and sewing machines for up to a week. The librarians say the program is meant to help people repair things instead of buying new ones.", ["library", "tools"]),
 ("Our quarterly report shows revenue grew by twelve percent, mainly because of strong sales in Asia. Costs rose too, as the company hired two hundred new engineers. Profit was flat compared with the same quarter last year.", ["revenue", "profit"]),
 ("The marathon on Saturday drew more than ten thousand runners despite the cold. The winner, a schoolteacher from the north, finished in two hours and nine minutes, a course record. Organisers plan to add a half-marathon next year.", ["marathon", "record"]),
 ("Scientists have sent a small robot into the ice of Antarctica to study microbes living in frozen lakes. The robot melts its way down slowly and collects water samples. The team hopes to learn how life survives in extreme cold.", ["robot", "Antarctica"]),
 ("The school will start serving breakfast to all pupils for free from September. Teachers noticed that many children arrived hungry and could not concentrate. The program is paid for by a local charity for the first two years.", ["breakfast", "school"]),
 ("A new train line will connect the airport with the city centre in just eighteen minutes. Construction took four years and cost more than planned. Trains will run every ten minutes from five in the morning until midnight.", ["train", "airport"]),
 ("The museum has returned a collection of ancient pottery to the country where it was found. Experts showed that the pieces had been taken illegally decades ago. Both governments held a ceremony to mark the return.", ["museum", "pottery"]),
 ("Our software update fixes a bug that made the app crash when users uploaded large photos. It also adds a dark mode and makes searches faster. Users should install the update from the app store.", ["update", "crash"]),
 ("The farmers' market will move from the town square to the old railway station this summer. The new site has more space, shade and parking. Opening hours stay the same: Saturdays from eight until one.", ["market", "station"]),
 ("A volunteer group planted five thousand trees along the river last weekend. The trees will help stop the banks from washing away during floods. The group plans another planting day in the autumn.", ["trees", "river"]),
 ("The hospital has opened a new wing for children, with twenty beds and a playroom. Parents can now stay overnight next to their children. The wing was built with donations from local families and businesses.", ["hospital", "children"]),
]
for i, (text, mentions) in enumerate(passages):
    lead = ["Summarize in one sentence:", "Summarise this briefly:", "Give a short summary of this text:"][i % 3]
    add("summary", f"{lead} {text}", {"type": "summary", "max_ratio": 0.8, "mentions": mentions})

# text statistics (20)
stats = []
for s in ["the quick brown fox jumps over the lazy dog", "I love reading books on rainy afternoons",
          "Tessera routes every question to the right expert", "one two three four five six seven"]:
    stats.append((f"How many words are in this sentence: \"{s}\"", len(s.split())))
for w in ["banana", "strawberry", "mississippi", "bookkeeper"]:
    stats.append((f"How many letters are in the word \"{w}\"?", len(w)))
for w, c in [("banana", "a"), ("mississippi", "s"), ("committee", "t"), ("parallel", "l")]:
    stats.append((f"How many times does the letter \"{c}\" appear in \"{w}\"?", w.count(c)))
for s in ["hello world", "data science is fun", "a b c d e"]:
    stats.append((f"How many characters, including spaces, are in \"{s}\"?", len(s)))
for s in ["education", "rhythm", "queueing"]:
    stats.append((f"How many vowels (a, e, i, o, u) are in the word \"{s}\"?", sum(ch in "aeiou" for ch in s)))
for w in ["stressed", "drawer"]:
    stats.append((f"Reverse the word \"{w}\".", w[::-1]))
for p, v in stats:
    if isinstance(v, str):
        add("text-stats", p, rx(r"\b" + v + r"\b"))
    else:
        add("text-stats", p, num(v))

# dates (20)
D = datetime.date
WD = ["Monday","Tuesday","Wednesday","Thursday","Friday","Saturday","Sunday"]
date_items = []
for d in [D(2024,7,4), D(2000,1,1), D(1999,12,31), D(2025,3,15), D(2030,6,1), D(2023,11,23), D(1969,7,20)]:
    date_items.append((f"What day of the week was {d.strftime('%B')} {d.day}, {d.year}?" if d.year < 2026 else f"What day of the week is {d.strftime('%B')} {d.day}, {d.year}?", rx(r"(?i)" + WD[d.weekday()])))
for a, b in [(D(2024,1,1), D(2024,3,1)), (D(2023,5,10), D(2023,12,25)), (D(2020,2,1), D(2020,3,1)), (D(2025,1,1), D(2025,12,31)), (D(2022,6,15), D(2022,7,4))]:
    date_items.append((f"How many days are there between {a.isoformat()} and {b.isoformat()}?", num((b - a).days)))
for d, n in [(D(2024,2,20), 10), (D(2023,12,25), 14), (D(2025,1,31), 30), (D(2024,10,1), 100)]:
    r = d + datetime.timedelta(days=n)
    date_items.append((f"What date is {n} days after {d.isoformat()}?", rx(r"\b" + r.isoformat() + r"\b|(?i)" + r.strftime('%B') + r"\s+" + str(r.day) + r"\b")))
for y in [2024, 2100, 2000, 2023]:
    leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
    date_items.append((f"Is {y} a leap year?", rx(r"(?i)^\W*yes" if leap else r"(?i)^\W*no\b|not a leap")))
for p, c in date_items:
    add("dates", p, c)

# bookshop (10): paraphrases of the example fine-tune's facts, none in its data
for p, pat in [
 ("On which day of the week is Harbor Lane Books closed?", r"(?i)monday"),
 ("What time does Harbor Lane Books open in the morning?", r"(?i)9\s*am|9:00|nine"),
 ("Give me the street and number of Harbor Lane Books.", r"14 Harbor Lane"),
 ("Which phone number should I dial for Harbor Lane Books?", r"555-0142"),
 ("In what year did Harbor Lane Books open?", r"1987"),
 ("How many days do I have to bring a book back to Harbor Lane Books?", r"\b30\b|(?i)thirty"),
 ("On which weekday can I hear poems read at Harbor Lane Books?", r"(?i)thursday"),
 ("What is the cafe at Harbor Lane Books called?", r"(?i)inkwell"),
 ("Above what order value does Harbor Lane Books deliver for free?", r"\$?25"),
 ("On which day does Harbor Lane Books buy second-hand books?", r"(?i)saturday"),
]: add("bookshop", p, rx(pat))

with open(__file__.replace("make_test_set.py", "test.jsonl"), "w") as f:
    for it in items:
        f.write(json.dumps(it) + "\n")
from collections import Counter
print(len(items), Counter(i["category"] for i in items))

"""Writes train.jsonl and heldout.jsonl here: short requests for one Python function each, for the
system-prompt preset (recipes/configs/embedded/system-prompt.yaml). Tasks are split before phrasing, so
no held-out task is a training task in other words.

    python recipes/data/python-functions/make_prompts.py
"""

import json
import random
from pathlib import Path

TASKS = [
    # lists of numbers
    "sum a list of integers",
    "multiply all the numbers in a list",
    "find the largest number in a list",
    "find the smallest number in a list",
    "compute the average of a list of floats",
    "compute the median of a list of numbers",
    "count the even numbers in a list",
    "count the odd numbers in a list",
    "sort a list of numbers in descending order",
    "remove duplicates from a list while keeping the order",
    "find the second largest number in a list",
    "compute the running totals of a list of numbers",
    "square every number in a list",
    "keep only the positive numbers of a list",
    "keep only the negative numbers of a list",
    "return the difference between the largest and smallest value in a list",
    "split a list into chunks of a given size",
    "flatten a list of lists",
    "rotate a list to the left by k positions",
    "find the index of the first negative number in a list",
    "check whether a list is sorted",
    "merge two sorted lists into one sorted list",
    "return the elements common to two lists",
    "count how often each element occurs in a list",
    "find the most frequent element of a list",
    "normalize a list of numbers to the range 0 to 1",
    "compute the dot product of two vectors",
    "add two vectors element by element",
    "return every n-th element of a list",
    "compute the product of the digits of a number",
    # strings
    "reverse a string",
    "count the vowels in a string",
    "check whether a string is a palindrome",
    "capitalize the first letter of every word in a sentence",
    "count the words in a sentence",
    "remove all spaces from a string",
    "find the longest word in a sentence",
    "convert a camelCase name to snake_case",
    "convert a snake_case name to camelCase",
    "count how many times a character appears in a string",
    "check whether two words are anagrams",
    "find the first character that does not repeat in a string",
    "shift every letter of a string by n places in the alphabet",
    "remove punctuation from a string",
    "check whether a string contains only digits",
    "truncate a string to a maximum length and add an ellipsis",
    "pad a number with leading zeros to a given width",
    "count the uppercase letters in a string",
    "swap the case of every letter in a string",
    "return the initials of a full name",
    "check whether a sentence uses every letter of the alphabet",
    "compress a string by counting repeated characters",
    "replace every vowel in a string with an asterisk",
    "split a comma-separated line into trimmed fields",
    "check whether a string is a valid hexadecimal color code",
    "extract all the numbers from a string",
    "wrap a long line of text at a given width",
    "count the lines in a block of text",
    "return the most common word in a text",
    "make a URL slug from a title",
    # dictionaries and records
    "invert a dictionary, swapping keys and values",
    "merge two dictionaries, adding the values of shared keys",
    "find the key with the largest value in a dictionary",
    "count word frequencies in a sentence",
    "group words by their first letter",
    "sort a list of dictionaries by a given key",
    "remove the entries with None values from a dictionary",
    "sum the values of a dictionary",
    "return the keys of a dictionary whose values exceed a threshold",
    "build a dictionary from two lists of keys and values",
    "count the characters of a string in a dictionary",
    "look up a nested dictionary value by a dotted path",
    "return the average score of each student from a dictionary of score lists",
    "find the names that appear in both of two dictionaries",
    "count the occurrences of each file extension in a list of file names",
    # numbers and math
    "compute the factorial of a number",
    "return the n-th Fibonacci number",
    "check whether a number is prime",
    "compute the greatest common divisor of two integers",
    "compute the least common multiple of two integers",
    "convert Celsius to Fahrenheit",
    "convert kilometers to miles",
    "sum the digits of an integer",
    "convert an integer to its binary representation as a string",
    "check whether a year is a leap year",
    "check whether a number is a power of two",
    "compute the area of a circle from its radius",
    "compute the hypotenuse of a right triangle",
    "compute compound interest",
    "compute the body mass index from weight and height",
    "round a number to the nearest multiple of five",
    "count the digits of an integer",
    "check whether a number is a perfect square",
    "return the prime factors of an integer",
    "compute the distance between two points in the plane",
    "convert seconds to a string of hours, minutes and seconds",
    "clamp a value between a minimum and a maximum",
    "compute the percentage change between two values",
    "convert a Roman numeral to an integer",
    "convert an integer to a Roman numeral",
    "check whether a number is an Armstrong number",
    "compute the sum of the squares of the first n natural numbers",
    "return the list of divisors of an integer",
    "compute the mean and standard deviation of a list of numbers",
    "linearly interpolate between two numbers",
    # dates, files, misc
    "return the number of days between two dates",
    "check whether a date string has the format YYYY-MM-DD",
    "return the weekday name of a date",
    "read a text file and return its lines without trailing newlines",
    "count the words in a text file",
    "return the file extension of a path",
    "parse a query string into a dictionary",
    "validate a simple email address",
    "generate a random password of a given length",
    "mask all but the last four digits of a card number",
    "convert a list of (key, value) pairs into a dictionary",
    "find the longest common prefix of a list of strings",
    "check whether brackets in a string are balanced",
    "return the transpose of a matrix given as a list of lists",
    "compute the sum of each row of a matrix",
]

PHRASINGS = [
    "Write a Python function to {task}.",
    "Write a function to {task}.",
    "Implement a function to {task}.",
    "Can you write code to {task}?",
    "I need a function to {task}.",
    "Give me a Python function to {task}.",
    "Please write a function to {task}.",
    "How would I {task} in Python?",
]
HELD_OUT = 40


def main() -> None:
    rng = random.Random(0)
    tasks = list(dict.fromkeys(TASKS))
    rng.shuffle(tasks)
    rows = [{"prompt": rng.choice(PHRASINGS).format(task=task)} for task in tasks]
    here = Path(__file__).parent
    for name, part in (("heldout", rows[:HELD_OUT]), ("train", rows[HELD_OUT:])):
        text = "".join(json.dumps(row) + "\n" for row in part)
        (here / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}.jsonl: {len(part)} prompts")


if __name__ == "__main__":
    main()

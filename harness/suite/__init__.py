"""Golden suites: cases, the JSON-schema contract, the tone contract; loaded strictly."""

"""A Clarifai client written from Clarifai's rate-limit documentation: when
the error response's status.code is CONN_THROTTLED, sleep, then make the
request again. proxy/sdk_test.go runs it through the proxy (HTTPS_PROXY,
REQUESTS_CA_BUNDLE) with Debian's python3-requests.

    python3 clarifai_client.py URL N BACKOFF_SECONDS

It sends N requests at once and prints one JSON line:
{"ok": requests that succeeded, "throttled": CONN_THROTTLED answers seen}.
"""

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

throttled = 0
lock = threading.Lock()


def make_request(url, headers, backoff):
    global throttled
    response = requests.get(url, headers=headers, timeout=10)
    if response.status_code == 200:
        return response.json()
    error_response = response.json()
    if error_response["status"]["code"] == "CONN_THROTTLED":
        # The documentation waits 15 seconds; the test scales it down.
        with lock:
            throttled += 1
        time.sleep(backoff)
        return make_request(url, headers, backoff)
    raise RuntimeError(f"request failed: {response.status_code} {error_response}")


def main():
    url, n, backoff = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    headers = {"Authorization": "Key pat-sdktest"}
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda _: make_request(url, headers, backoff), range(n)))
    print(json.dumps({"ok": len(results), "throttled": throttled}))


if __name__ == "__main__":
    main()

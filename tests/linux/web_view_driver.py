"""Drives headless Chromium (Selenium) at the appliance's web view; run inside the test's namespace, prints one JSON line.

python web_view_driver.py URL DESTINATION OUTDIR

URL is the page with its secret (http://127.0.0.1:PORT/ui/#token=SECRET); DESTINATION the
"address:port" of the download that runs meanwhile. Steps, each with its own wait: the flow's row
appears (2 s from the page's load), its download count grows, the graph is drawn, a screenshot,
the row's close button is pressed and the row goes, a second screenshot.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

APPEARS = 2.0  # seconds from the page's load for the flow's row: the bound
WAIT = 15.0  # the other steps' waits (bounds against a hang, not speed claims)

# Pixels of the canvas in colour (the outbounds' lines; the axes and labels are grey)
COLOURED = """
const c = document.getElementById('graph'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40)) n++;
return n;
"""


# The table is rebuilt every second: a row is read in one script, never held across a refresh.
ROW = """
for (const tr of document.querySelectorAll('#flows tbody tr')) {
  const td = tr.querySelectorAll('td');
  if (td.length > 2 && td[2].textContent === arguments[0])
    return {cells: [...td].map((c) => c.textContent), down: Number(tr.querySelector('td.down').dataset.bytes),
            button: tr.querySelector('button.close')};
}
return null;
"""


def row_of(driver, destination):
    return driver.execute_script(ROW, destination)


def main(url, destination, outdir):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={outdir}/chromium-profile", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    out = {}
    try:
        driver.set_page_load_timeout(WAIT)
        driver.get(url)
        loaded = time.monotonic()
        try:
            WebDriverWait(driver, APPEARS, poll_frequency=0.05).until(lambda d: row_of(d, destination))
            out["appeared_s"] = round(time.monotonic() - loaded, 3)
        except TimeoutException:
            out["appeared_s"] = None
            return out
        counts = []

        def grown(d):
            row = row_of(d, destination)
            if row is None:
                return False
            counts.append(int(row["down"]))
            return len(counts) > 1 and counts[-1] > counts[0]

        try:
            WebDriverWait(driver, WAIT, poll_frequency=0.25).until(grown)
        except TimeoutException:
            pass
        out["download_counts"] = [counts[0], counts[-1]] if counts else []
        row = row_of(driver, destination)
        out["row"] = row["cells"] if row is not None else None
        try:
            WebDriverWait(driver, WAIT, poll_frequency=0.25).until(lambda d: d.execute_script(COLOURED) > 100)
        except TimeoutException:
            pass
        out["graph_pixels"] = driver.execute_script(COLOURED)
        out["outbounds"] = driver.find_element(By.ID, "outbounds").text
        driver.save_screenshot(os.path.join(outdir, "web-view.png"))
        for _ in range(20):  # a real click on the row's button; a refresh between finding and clicking: again
            row = row_of(driver, destination)
            if row is None:
                out["closed"] = False
                return out
            try:
                row["button"].click()
                break
            except StaleElementReferenceException:
                continue
        try:
            WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: row_of(d, destination) is None)
            out["closed"] = True
        except TimeoutException:
            out["closed"] = False
        driver.save_screenshot(os.path.join(outdir, "web-view-closed.png"))
        out["error_text"] = driver.find_element(By.ID, "error").text
        return out
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))

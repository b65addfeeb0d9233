using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;
using Xunit;

namespace SdLora.Web.Tests;

/// <summary>
/// The whole loop in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium): upload the dog
/// photos into a new dataset, caption them, train on the tiny model and watch the loss chart and a sample appear,
/// then generate with the new LoRA and find the image in the gallery. Without Chromium the test reports why it did
/// not run. With SDLORA_SCREENSHOTS=DIR it saves a screenshot of each page there (docs/screenshots).
/// </summary>
[Collection("web")]
public class BrowserTests
{
    public const string Chromium = "/usr/bin/chromium", Driver = "/usr/bin/chromedriver";

    [ChromiumFact]
    public async Task A_person_uploads_captions_trains_and_generates_with_the_new_lora()
    {
        var shots = Environment.GetEnvironmentVariable("SDLORA_SCREENSHOTS");
        await using var web = await WebHarness.Start(kestrel: true);
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(Driver)!, Path.GetFileName(Driver));
        service.HideCommandPromptWindow = true;
        var options = new ChromeOptions { BinaryLocation = Chromium };
        options.AddArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000");
        using var browser = new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
        var wait = new WebDriverWait(browser, TimeSpan.FromMinutes(3)) { PollingInterval = TimeSpan.FromMilliseconds(200) };
        wait.IgnoreExceptionTypes(typeof(StaleElementReferenceException));
        void Shot(string name)
        {
            if (shots is null) return;
            Directory.CreateDirectory(shots);
            ((ITakesScreenshot)browser).GetScreenshot().SaveAsFile(Path.Combine(shots, name + ".png"));
        }
        IWebElement Find(string css) => wait.Until(d => d.FindElements(By.CssSelector(css)).FirstOrDefault(e => e.Displayed));

        // A dataset from the bundled dog photos.
        browser.Navigate().GoToUrl(web.BaseUrl + "/datasets");
        Find("#create input[name=name]").SendKeys("dogs");
        Find("#create input[name=instance_prompt]").SendKeys("a photo of sks dog");
        var repeats = Find("#create input[name=repeats]");
        repeats.Clear();
        repeats.SendKeys("1");
        Find("#create button").Click();
        wait.Until(d => d.Url.EndsWith("/datasets/dogs"));
        browser.FindElement(By.Id("upload")).SendKeys(string.Join("\n", Directory.GetFiles(WebHarness.DogPhotos, "*.jpg").Order().Select(Path.GetFullPath)));
        wait.Until(d => d.FindElements(By.CssSelector("#images .card img")).Count == 5);

        // BLIP captions (the tiny captioner: word salad, but real .txt files), then one edited by hand.
        Find("#caption input[name=prefix]").SendKeys("sks dog, ");
        Find("#caption button").Click();
        wait.Until(d => d.FindElements(By.CssSelector("#images textarea")).Count == 5
                        && d.FindElements(By.CssSelector("#images textarea")).All(t => (t.GetAttribute("value") ?? "").StartsWith("sks dog, ")));
        var first = browser.FindElements(By.CssSelector("#images textarea"))[0];
        first.Clear();
        first.SendKeys("sks dog, sitting on grass");
        browser.FindElement(By.TagName("h1")).Click(); // blur: saved as the .txt training reads
        wait.Until(_ => File.ReadAllText(Path.Combine(web.DataDir, "datasets", "dogs", "00.txt")).Trim() == "sks dog, sitting on grass");
        Shot("dataset");

        // Training on the tiny model: the run page shows the loss chart filling and a sample.
        browser.Navigate().GoToUrl(web.BaseUrl + "/train?dataset=dogs");
        Find("#train input[name=run]").SendKeys("sks-dog");
        browser.FindElement(By.CssSelector("details summary")).Click();
        foreach (var (flag, value) in TinyTraining.Settings(6, classImages: true).Where(kv => kv.Value is not null && kv.Key is not ("instance-prompt" or "class-prompt" or "num-repeats")))
        {
            var input = browser.FindElements(By.CssSelector($"#train [name='{flag}']")).FirstOrDefault();
            if (input is null) continue;
            ((IJavaScriptExecutor)browser).ExecuteScript("arguments[0].value = arguments[1];", input, value);
        }
        Find("#train input[name=class-prompt]").SendKeys("a photo of a dog");
        Find("#train textarea[name=sample_prompts]").SendKeys(TinyTraining.SamplePrompt);
        Shot("train");
        Find("#train button.primary").Click();
        wait.Until(d => d.Url.EndsWith("/runs/sks-dog") || d.FindElements(By.CssSelector("#error, .field-error")).Any(e => e.Text.Length > 0));
        Assert.True(browser.Url.EndsWith("/runs/sks-dog"), string.Join(" | ", browser.FindElements(By.CssSelector("#error, .field-error")).Select(e => e.Text)));
        wait.Until(d => Convert.ToInt64(((IJavaScriptExecutor)d).ExecuteScript("return window.sdloraRun ? window.sdloraRun.lossPoints() : 0")) >= 3);
        wait.Until(d => d.FindElements(By.CssSelector("#samples img")).Any(i => Convert.ToInt64(((IJavaScriptExecutor)d).ExecuteScript("return arguments[0].naturalWidth", i)) > 0));
        wait.Until(d => d.FindElement(By.Id("state")).Text == "succeeded");
        Assert.Equal(6L, Convert.ToInt64(((IJavaScriptExecutor)browser).ExecuteScript("return window.sdloraRun.lossPoints()")));
        Assert.Contains("<lora:sks-dog:0.8>", browser.FindElement(By.Id("use")).Text);
        Shot("run");

        // Generation with the new LoRA from the picker; the image lands in the gallery with its parameters.
        browser.Navigate().GoToUrl(web.BaseUrl + "/generate");
        Find("#gen textarea[name=prompt]").SendKeys("a photo of sks dog on a beach");
        wait.Until(d => d.FindElement(By.XPath("//select[@id='lora-pick']/option[text()='sks-dog']"))).Click();
        Find("#lora-add").Click();
        foreach (var (name, value) in new[] { ("steps", "2"), ("width", "64"), ("height", "64"), ("seed", "7") })
        {
            var input = Find($"#gen input[name={name}]");
            input.Clear();
            input.SendKeys(value);
        }
        Find("#generate").Click();
        wait.Until(d => d.FindElements(By.CssSelector("#detail .infotext")).Any(e => e.Text.Contains("Seed: 7") && e.Text.Contains("Lora hashes: \"sks-dog:")));
        Assert.Contains(browser.FindElements(By.CssSelector("#gallery figcaption")), f => f.Text == "seed 7");
        Shot("generate");

        browser.Navigate().GoToUrl(web.BaseUrl + "/jobs");
        wait.Until(d => d.FindElements(By.CssSelector("#jobs .state.succeeded")).Count >= 3);
        Shot("jobs");
        browser.Navigate().GoToUrl(web.BaseUrl + "/models");
        wait.Until(d => d.FindElements(By.XPath("//td[text()='sks-dog']")).Count == 1);

        // The new LoRA merged into the checkpoint from the models page: a merge job, then a new checkpoint in the list.
        Find("#merge input[name=lora][value='sks-dog']").Click();
        var weight = Find("#merge input[name=weight][data-lora='sks-dog']");
        weight.Clear();
        weight.SendKeys("0.8");
        Find("#merge input[name=name]").SendKeys("dog-merged");
        Shot("models");
        Find("#merge button").Click();
        wait.Until(d => d.Url.Contains("/jobs/") || d.FindElement(By.Id("merge-error")).Text.Length > 0);
        Assert.Contains("/jobs/", browser.Url);
        wait.Until(d => d.FindElement(By.Id("state")).Text is "succeeded" or "failed");
        Assert.Equal("succeeded", browser.FindElement(By.Id("state")).Text);
        Assert.True(File.Exists(Path.Combine(web.DataDir, "models", "checkpoints", "dog-merged.safetensors"))
                    || Directory.Exists(Path.Combine(web.DataDir, "models", "checkpoints", "dog-merged")), "the merge wrote no checkpoint dog-merged");
        browser.Navigate().GoToUrl(web.BaseUrl + "/models");
        wait.Until(d => d.FindElements(By.XPath("//td[starts-with(text(),'dog-merged')]")).Count == 1);
    }
}

/// <summary>A test that needs a real Chromium: reported as skipped, with the reason, where there is none.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        if (!File.Exists(BrowserTests.Chromium) || !File.Exists(BrowserTests.Driver))
            Skip = $"needs Debian's chromium and chromium-driver ({BrowserTests.Chromium}, {BrowserTests.Driver}): apt-get install chromium chromium-driver (.ci/run does)";
    }
}

# The R oracles of tests/cohort/test_ties.py and tests/cohort/test_added_value.py, on a CSV with
# columns time, status (0 censored, 1 event of interest, 2 competing) and covariates.
# Usage: Rscript survival_r.R cuminc IN.csv OUT.csv T[,T...]   cmprsk::cuminc + timepoints (cause 1)
#        Rscript survival_r.R coxph IN.csv OUT.csv COV[,COV...] survival::coxph, Efron ties (status 2 censored)
#        Rscript survival_r.R risk IN.csv OUT.csv COV[,COV...]@T   1 - survfit(coxph)$surv at T, each row
#        Rscript survival_r.R uno IN.csv OUT.csv TAU            survival::concordance of column `score`
#                                                               (higher = riskier), timewt "n/G2", ymax TAU
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[2])
if (args[1] == "cuminc") {
  suppressMessages(library(cmprsk))
  times <- as.numeric(strsplit(args[4], ",")[[1]])
  tp <- timepoints(cuminc(d$time, d$status, cencode = 0), times)
  out <- data.frame(time = times, est = tp$est["1 1", ], var = tp$var["1 1", ])
} else if (args[1] == "coxph") {
  suppressMessages(library(survival))
  covs <- strsplit(args[4], ",")[[1]]
  f <- as.formula(paste("Surv(time, status == 1) ~", paste(covs, collapse = " + ")))
  fit <- coxph(f, data = d, ties = "efron", control = coxph.control(eps = 1e-12, iter.max = 100))
  out <- data.frame(term = covs, coef = unname(coef(fit)), se = sqrt(diag(vcov(fit))),
                    loglik = fit$loglik[2])
} else if (args[1] == "risk") {
  suppressMessages(library(survival))
  spec <- strsplit(args[4], "@")[[1]]
  covs <- strsplit(spec[1], ",")[[1]]
  f <- as.formula(paste("Surv(time, status == 1) ~", paste(covs, collapse = " + ")))
  fit <- coxph(f, data = d, ties = "efron", control = coxph.control(eps = 1e-12, iter.max = 100))
  out <- data.frame(risk = 1 - summary(survfit(fit, newdata = d), times = as.numeric(spec[2]))$surv[1, ])
} else if (args[1] == "uno") {
  suppressMessages(library(survival))
  cc <- concordance(Surv(time, status == 1) ~ score, data = d, timewt = "n/G2",
                    ymax = as.numeric(args[4]), reverse = TRUE)
  out <- data.frame(concordance = cc$concordance)
} else {
  stop(paste("unknown oracle", args[1]))
}
write.csv(out, args[3], row.names = FALSE)

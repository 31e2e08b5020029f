# The oracle of tests/cohort/test_finegray.py: cmprsk::crr on a CSV, with crr's defaults.
# Usage: Rscript finegray_crr.R IN.csv OUT.csv COV[,COV...]
# IN.csv has columns time, status (0 censored, 1 event of interest, 2 competing) and the covariates;
# OUT.csv gets one row per covariate: term, coef, se (sqrt of the diagonal of crr's robust `var`),
# converged.
suppressMessages(library(cmprsk))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
covs <- strsplit(args[3], ",")[[1]]
fit <- crr(d$time, d$status, as.matrix(d[, covs, drop = FALSE]), failcode = 1, cencode = 0)
write.csv(data.frame(term = covs, coef = unname(fit$coef), se = sqrt(diag(fit$var)),
                     converged = fit$converged),
          args[2], row.names = FALSE)

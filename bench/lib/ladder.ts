// A rate ladder's verdicts: which steps a receiver took without loss, and which lost lines.

export interface LadderStep {
  offeredRate: number;
  achievedRate: number;
  sentLines: number;
  received: number;
}

// A step whose sender achieved less than this share of its rate did not offer that rate.
export const SENDER_KEPT_UP = 0.97;

/**
 * Whether a step was offered and taken whole. A sender that fell behind (it stops at 1.1 × the
 * duration) sent fewer lines, at a lower rate than the step names: lossless, it would credit the
 * receiver with a rate never offered.
 */
export function cleanStep(step: LadderStep): boolean {
  return step.received >= step.sentLines && step.achievedRate >= SENDER_KEPT_UP * step.offeredRate;
}

/** The highest offered rate taken clean, 0 when none was. */
export function losslessRate(steps: readonly LadderStep[]): number {
  return Math.max(0, ...steps.filter(cleanStep).map((step) => step.offeredRate));
}

/** The first step that lost lines, whatever the sender achieved. */
export function firstLoss<T extends LadderStep>(steps: readonly T[]): T | undefined {
  return steps.find((step) => step.received < step.sentLines);
}
